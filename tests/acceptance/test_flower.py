"""`promptq flower` as an operator uses it: behind its login, each job a task, the
queue counted over every priority step; checked in a real headless browser."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from promptq.config import Settings
from promptq.constants import gpu_interactive_queue, gpu_queue
from promptq.db import create_sync_engine
from promptq.scheduler.dispatch import publish
from promptq.workers.celery_app import make_celery
from tests.acceptance.helpers import chat_line, upload_and_run, wait_batch, write_jsonl
from tests.acceptance.ops_stack import IDLE_GPU_MODEL, private_stack
from tests.browser import browser
from tests.procs import Child, free_port, wait_for, wait_http
from tests.stack import make_key

__all__ = ["browser"]

LOGIN = ("ops", "fs")


@dataclass
class Watched:
    flower_url: str
    pg_url: str
    failed_ids: list[str]
    errors: dict[str, str]  # job id -> "code: message"
    succeeded: int


def _flower_get(url: str, auth: tuple[str, str] | None = LOGIN) -> httpx.Response:
    return httpx.get(url, auth=auth, timeout=10)


def _tasks(flower_url: str, state: str) -> dict[str, Any]:
    tasks: dict[str, Any] = _flower_get(f"{flower_url}/api/tasks?state={state}").json()
    return tasks


@pytest.fixture(scope="module")
def watched(
    log_dir: Path, tmp_path_factory: pytest.TempPathFactory, sim_url: str
) -> Iterator[Watched]:
    """Flower watching a deployment of its own while a batch with 2 refused lines runs,
    then 3 chunk messages left at steps 0, 3 and 7 of a queue no worker consumes."""
    home = tmp_path_factory.mktemp("flower")
    with private_stack(log_dir, home, sim_url) as stack:
        api_url = stack.api()
        stack.worker()
        port = free_port()
        flower = Child.promptq(
            "flower",
            ["flower", "--port", str(port), "--address", "127.0.0.1", "--basic-auth", "ops:fs"],
            stack.env,
            log_dir,
        )
        stack.children.append(flower)
        flower_url = f"http://127.0.0.1:{port}"
        wait_http(f"{flower_url}/healthcheck")
        # Flower has seen the worker's heartbeat: its event receiver is listening.
        wait_for(lambda: bool(_flower_get(f"{flower_url}/api/workers").json()), 60, "worker")
        pg_url = stack.env["PROMPTQ_DATABASE_URL"]
        client = httpx.Client(
            base_url=api_url,
            headers={"Authorization": f"Bearer {make_key(pg_url, 'flower')}"},
            timeout=60,
        )
        lines = [
            chat_line(f"f-{i}", f"Flower line {i}" + (" [[sim:status=400]]" if i in (2, 7) else ""))
            for i in range(12)
        ]
        batch = upload_and_run(client, write_jsonl(home / "in.jsonl", lines))
        assert wait_batch(client, batch["id"])["status"] == "completed"
        engine = create_sync_engine(pg_url)
        with engine.connect() as conn:
            failed = "SELECT id, error_code, error_message FROM jobs WHERE status = 'failed'"
            errors = {
                r.id: f"{r.error_code}: {r.error_message}" for r in conn.execute(sa.text(failed))
            }
            succeeded = conn.execute(
                sa.text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            ).scalar_one()
        engine.dispose()
        idle = gpu_queue(IDLE_GPU_MODEL)
        celery = make_celery(Settings(redis_url=stack.env["PROMPTQ_REDIS_URL"]))
        publish(celery, [(f"x{s}", idle, s, False) for s in (0, 3, 7)], 32)
        yield Watched(flower_url, pg_url, sorted(errors), errors, int(succeeded))
        client.close()


def test_every_flower_page_and_api_asks_for_the_login(watched: Watched) -> None:
    # Given Flower started with --basic-auth
    for path in (
        "/",
        "/tasks",
        "/broker",
        "/api/workers",
        "/api/tasks",
        "/metrics",
        "/healthcheck",
    ):
        # When a page is asked for without the login, or with a wrong one
        bare = _flower_get(f"{watched.flower_url}{path}", auth=None)
        wrong = _flower_get(f"{watched.flower_url}{path}", auth=("ops", "nope"))
        # Then it is refused, and the login opens it
        assert (bare.status_code, wrong.status_code) == (401, 401), path
        assert _flower_get(f"{watched.flower_url}{path}").status_code == 200, path


def test_flowers_worker_page_says_what_the_worker_serves(watched: Watched) -> None:
    # Given the deployment's one remote worker
    # When Flower asks the workers for their configuration
    workers = _flower_get(f"{watched.flower_url}/api/workers?refresh=1").json()
    # Then the worker says the models it serves and how many jobs it runs at once
    (info,) = workers.values()
    described = info["conf"]["promptq_worker"]
    assert described["models"] == ["sim-gpt"] and described["kind"] == "remote"
    assert described["max_in_flight"] == 64


def test_flower_counts_jobs_as_the_jobs_table_does(watched: Watched) -> None:
    # Given the batch's jobs: 10 succeeded and 2 refused by the provider
    assert (watched.succeeded, len(watched.failed_ids)) == (10, 2)
    # When Flower's task list is read (events arrive within a second)
    wait_for(
        lambda: (
            len(_tasks(watched.flower_url, "SUCCESS")) == watched.succeeded
            and len(_tasks(watched.flower_url, "FAILURE")) == len(watched.failed_ids)
        ),
        30,
        "Flower to count every job",
    )
    # Then each job is a task named by its model, a failed job a failed task with its code
    failed = _tasks(watched.flower_url, "FAILURE")
    assert set(failed) == set(watched.failed_ids)
    for job_id, task in failed.items():
        assert task["name"] == "sim-gpt"
        assert task["exception"] == watched.errors[job_id]
        assert "'f-2'" in task["args"] or "'f-7'" in task["args"]
    # And no chunk message shows up as a task of its own
    assert not _tasks(watched.flower_url, "STARTED") or all(
        t["name"] == "sim-gpt" for t in _tasks(watched.flower_url, "STARTED").values()
    )
    assert all(t["name"] == "sim-gpt" for t in _tasks(watched.flower_url, "SUCCESS").values())
    # And the queues no worker consumes hold the 3 messages: step 7 on the model's queue,
    # the interactive steps 0 and 3 on its interactive queue
    lengths = _flower_get(f"{watched.flower_url}/api/queues/length").json()["active_queues"]
    messages = {q["name"]: q["messages"] for q in lengths}
    assert messages[gpu_queue(IDLE_GPU_MODEL)] == 1
    assert messages[gpu_interactive_queue(IDLE_GPU_MODEL)] == 2


def test_a_failed_job_is_listed_as_failed_in_the_browser(
    browser: WebDriver, watched: Watched
) -> None:
    wait = WebDriverWait(browser, 30)
    token = base64.b64encode(":".join(LOGIN).encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    try:
        # Given Flower's task list in Chromium, with the login
        wait_for(lambda: len(_tasks(watched.flower_url, "FAILURE")) == 2, 30, "failed tasks")
        browser.get(f"{watched.flower_url}/tasks")
        # When the failed job's row has loaded
        job_id = watched.failed_ids[0]
        row = wait.until(
            ec.presence_of_element_located((By.XPATH, f"//tr[.//a[contains(., '{job_id}')]]"))
        )
        # Then it says FAILURE, with the model as the task's name
        wait.until(lambda _: "FAILURE" in row.text)
        assert "sim-gpt" in row.text, row.text
        # And the broker page counts the idle GPU model's 3 messages over every step: step 7
        # on its queue, steps 0 and 3 on its interactive queue
        browser.get(f"{watched.flower_url}/broker")
        for queue, count in (
            (gpu_queue(IDLE_GPU_MODEL), "1"),
            (gpu_interactive_queue(IDLE_GPU_MODEL), "2"),
        ):
            queue_row = wait.until(
                ec.presence_of_element_located((By.XPATH, f"//tr[td[contains(., '{queue}')]]"))
            )
            assert queue_row.find_elements(By.TAG_NAME, "td")[1].text.strip() == count, (
                queue_row.text
            )
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
