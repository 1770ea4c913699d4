"""The one Celery task, and how a worker process starts around its runtime."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery, signals

from promptq.constants import TASK_RUN_CHUNK
from promptq.queues import BULK_BAND
from promptq.workers.runtime import WorkerRuntime

__all__ = ["register_tasks", "run_worker"]

log = structlog.get_logger(__name__)


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Register `promptq.run_chunk`, which hands a chunk of job ids to the runtime."""

    @app.task(name=TASK_RUN_CHUNK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_chunk(job_ids: list[str], step: int = BULK_BAND, alone: bool = False) -> int:
        # Acked once the jobs are claimed: from then on Postgres leases protect them.
        return runtime.admit(list(job_ids), int(step), bool(alone))


def run_worker(
    app: Celery,
    runtime: WorkerRuntime,
    queues: list[str],
    *,
    threads: int,
    loglevel: str,
    extra_args: list[str] | None = None,
) -> None:
    """Run a Celery worker on `queues` with a thread pool that feeds the runtime."""
    register_tasks(app, runtime)

    def _shutdown(**_: Any) -> None:
        log.info("worker.stopping", owner=runtime.owner, in_flight=runtime.in_flight)
        runtime.stop()

    def _ready(**_: Any) -> None:
        log.info("worker.ready", owner=runtime.owner, queues=queues)

    signals.worker_ready.connect(_ready, weak=False)
    signals.worker_shutdown.connect(_shutdown, weak=False)
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={threads}",
        f"--queues={','.join(queues)}",
        f"--hostname={runtime.owner.replace(':', '-')}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        *(extra_args or []),
    ]
    app.worker_main(argv)
