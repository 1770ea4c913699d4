"""`promptq demo`: a bulk document job end to end on one machine, with only Python.

An embedded Redis, a SQLite file, the API, a GPU worker running the small real model on
vLLM (its CPU build where there is no GPU) and the scheduler; 200 bundled documents are
summarised and classified through the API; results land in a JSONL file."""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from promptq.accelerator import engine_host
from promptq.client import Client
from promptq.config import Settings
from promptq.embedded import Child, free_port, redis_args, wait_until
from promptq.submit import follow

__all__ = ["ServiceFailed", "run_demo"]

DOCUMENTS = Path(__file__).parent / "data" / "documents.jsonl"
MODEL = "smollm2-135m"
CATEGORIES = ("finance", "technology", "health", "sports", "science", "weather", "travel")
# Two requests per document: a small model does one task at a time best.
TASKS = {
    "summary": ("Summarise this news snippet in one sentence.\n\n{text}", 48),
    "category": (
        "Classify this news snippet as one of: {categories}.\n\nSnippet: {text}\n\n"
        "Reply with one word.",
        12,
    ),
}


class ServiceFailed(RuntimeError):
    """A service of the demo exited or hung at start; the message names its log."""


@dataclass(frozen=True)
class DemoEnv:
    """Where the demo's processes find each other."""

    home: Path
    env: dict[str, str]
    api_url: str


def _documents(limit: int | None) -> list[dict[str, str]]:
    with DOCUMENTS.open(encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh if line.strip()]
    return docs[:limit] if limit else docs


def _batch_file(docs: list[dict[str, str]], path: Path) -> Path:
    """The bulk job: a summary and a category request for each document, as OpenAI batch
    lines (custom_id `<doc id>:<task>`)."""
    categories = ", ".join(CATEGORIES)
    with path.open("w", encoding="utf-8") as out:
        for doc in docs:
            for task, (prompt, max_tokens) in TASKS.items():
                content = prompt.format(categories=categories, text=doc["text"])
                body = {
                    "model": MODEL,
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": content}],
                }
                line = {
                    "custom_id": f"{doc['id']}:{task}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
                out.write(json.dumps(line) + "\n")
    return path


@contextmanager
def _services(console: Console, home: Path, device: str) -> Iterator[DemoEnv]:
    """Embedded Redis, a fresh SQLite database, the API, a GPU worker and the scheduler."""
    logs = home / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    for stale in home.glob("promptq.db*"):
        stale.unlink()
    redis_port, api_port = free_port(), free_port()
    env = {
        "PROMPTQ_HOME": str(home.parent),
        "PROMPTQ_DATABASE_URL": f"sqlite:///{home}/promptq.db",
        "PROMPTQ_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PROMPTQ_CHUNK_SIZE": "8",
        "PROMPTQ_SWEEP_INTERVAL_SECONDS": "2",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    with ExitStack() as stack:
        redis = Child("redis", redis_args(redis_port, home), {}, logs)
        stack.callback(redis.stop)
        from promptq.migrate import upgrade

        upgrade(env["PROMPTQ_DATABASE_URL"])
        api = Child.promptq("api", ["api", "--port", str(api_port)], env, logs)
        stack.callback(api.stop)
        worker = Child.promptq("gpu-worker", ["worker", "gpu", "--model", MODEL], env, logs)
        stack.callback(worker.stop, 60)
        scheduler = Child.promptq("scheduler", ["scheduler"], env, logs)
        stack.callback(scheduler.stop)
        api_url = f"http://127.0.0.1:{api_port}"
        _wait(lambda: _ready(api_url), 60, api)
        loading = f"Loading the model into vLLM on the {device} (the first run converts it, ~1 min)"
        with console.status(loading):
            _wait(lambda: "worker.ready" in worker.log_text(), 900, worker)
        console.print(f"[green]services up[/green]: model on the {device}; logs in {logs}")
        yield DemoEnv(home=home, env=env, api_url=api_url)
        console.print("shutting down ...")


@contextmanager
def _exclusive(console: Console, home: Path) -> Iterator[None]:
    """One demo at a time per home: each starts by clearing the last one's logs and database."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / "demo.lock").open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"another promptq demo is running in {home}; waiting for it to end")
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _wait(predicate: Callable[[], bool], timeout: float, child: Child) -> None:
    """Wait for a child to be ready; if it dies or hangs, say where its log is."""
    try:
        wait_until(predicate, timeout, f"the {child.name}", child.alive)
    except (RuntimeError, TimeoutError) as exc:
        raise ServiceFailed(f"{exc}; its log: {child.log_path}") from None


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _api_key(env: dict[str, str]) -> str:
    import asyncio

    from promptq.db import Database
    from promptq.keys import create_key

    async def create() -> str:
        db = Database(env["PROMPTQ_DATABASE_URL"])
        try:
            async with db.session() as session:
                token, _ = await create_key(session, "demo")
                return token
        finally:
            await db.dispose()

    return asyncio.run(create())


def _answer(result: dict[str, Any]) -> str:
    """The model's text for a result line ('' for an error line)."""
    response = result.get("response")
    if not response or response["status_code"] != 200:
        return ""
    content: str = response["body"]["choices"][0]["message"]["content"]
    return content.strip()


def _category(answer: str) -> str | None:
    """The first of our categories the answer names, if any."""
    words = answer.lower()
    found = [(words.index(c), c) for c in CATEGORIES if c in words]
    return min(found)[1] if found else None


def _summary(
    console: Console,
    batch: dict[str, Any],
    results: list[dict[str, Any]],
    docs: list[dict[str, str]],
    seconds: float,
    output: Path,
    device: str,
) -> None:
    counts, usage = batch["request_counts"], batch["usage"]
    labels = {d["id"]: d["category"] for d in docs}
    named = {
        r["custom_id"].removesuffix(":category"): _category(_answer(r))
        for r in results
        if r["custom_id"].endswith(":category")
    }
    matched = sum(1 for doc, category in named.items() if category == labels.get(doc))
    console.print(f"""
[bold]promptq demo finished[/bold]: batch {batch["id"]} {batch["status"]}
  engine      vLLM on the {device}
  jobs        {counts["total"]} total, {counts["completed"]} succeeded, {counts["failed"]} failed
  tokens      {usage["input_tokens"]} prompt + {usage["output_tokens"]} completion
  throughput  {usage["output_tokens"] / seconds:.1f} completion tok/s over {seconds:.1f} s
  cost        ${batch["cost_usd"]:.6f} (self-hosted model, priced at zero in the models file)
  categories  {matched} of {len(docs)} documents classified as labelled
  results     {output.resolve()}""")
    answers = {r["custom_id"]: _answer(r) for r in results}
    doc = docs[0]
    console.print(f"  e.g. {doc['id']} ({doc['category']}): {doc['text']}")
    for task in TASKS:
        console.print(f"       {task}: {answers.get(doc['id'] + ':' + task, '')!r}")


def run_demo(*, documents: int | None, output: Path) -> int:
    """Run the demo; returns the process exit code."""
    console = Console(stderr=False)
    settings = Settings()
    home = settings.home / "demo"
    docs = _documents(documents)
    device = engine_host()
    with _exclusive(console, home), _services(console, home, device) as demo:
        client = Client(demo.api_url, _api_key(demo.env))
        try:
            upload = client.upload(_batch_file(docs, home / "documents-batch.jsonl"))
            started = time.monotonic()
            batch = follow(client, client.create_batch(upload["id"]))
            seconds = time.monotonic() - started
            with output.open("wb") as out:
                for file_id in (batch["output_file_id"], batch["error_file_id"]):
                    if file_id:
                        client.download(file_id, out)
        finally:
            client.close()
    results = [json.loads(line) for line in output.read_text().splitlines()]
    _summary(console, batch, results, docs, seconds, output, device)
    return 0 if batch["status"] == "completed" and batch["request_counts"]["failed"] == 0 else 1
