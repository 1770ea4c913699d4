"""A real `promptq worker remote` process whose heartbeat dies: the process stops itself
(Celery's warm shutdown), says why, and exits non-zero so an orchestrator restarts it.
The in-process side of this (the supervisor noticing) is in test_worker_runtime.py."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import stack_env
from tests.procs import Child, wait_for
from tests.stack import RedisServer

# The worker's own entry point, with one fault injected: its heartbeat beats once for real,
# then ends with an error no retry covers (as a bug in it would).
_DYING_HEARTBEAT = """
from promptq.workers import side_tasks

_real_heartbeat = side_tasks.heartbeat

async def dying_heartbeat(runtime):
    import asyncio
    beat = asyncio.ensure_future(_real_heartbeat(runtime))
    await asyncio.sleep(3)  # the Celery consumer is up by then, usually
    beat.cancel()
    raise RuntimeError("injected heartbeat fault")

side_tasks.heartbeat = dying_heartbeat

from promptq.cli import app
app(["worker", "remote", "--concurrency", "4", "--loglevel", "info"])
"""


def test_a_worker_process_whose_heartbeat_dies_exits_non_zero_and_says_why(
    integration_pg_url: str,
    redis_server: RedisServer,
    models_file: Path,
    tmp_path: Path,
    log_dir: Path,
) -> None:
    # Given a real remote worker process, consuming from a real Redis broker
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/8"
    env = stack_env(integration_pg_url, redis_url, models_file, tmp_path)
    worker = Child("dying-heartbeat", [sys.executable, "-c", _DYING_HEARTBEAT], env, log_dir)
    try:
        # When its heartbeat dies, the process ends by itself
        wait_for(lambda: not worker.alive(), 90, "the worker to stop itself")
        code = worker.popen.wait()
        log = worker.log_text()
    finally:
        worker.stop()
    # Then with a failure exit status and the reason, for the orchestrator and the operator
    # (status 1 after Celery's warm shutdown; killed by the SIGTERM if it came before
    # Celery had set its handlers: non-zero either way)
    assert code != 0, log
    assert "worker.side_task_died" in log, log
    assert "worker.stopping_after_death" in log, log
    assert "injected heartbeat fault" in log, log
