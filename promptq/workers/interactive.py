"""A worker's consumer of interactive chunks, on a thread of its own (remote and GPU workers).

Celery's threads block while they admit bulk chunks (the runtime has no room); were
interactive chunks in the same queue, they would sit in Redis until a thread is free.
This consumer reads only the interactive queue and admits at once (the runtime always
has room for the interactive band), so an interactive job starts the moment it arrives.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from celery import Celery
from kombu.entity import Queue

from promptq.constants import TASK_RUN_CHUNK
from promptq.workers.runtime import WorkerRuntime

__all__ = ["InteractiveConsumer"]

log = structlog.get_logger(__name__)


class InteractiveConsumer(threading.Thread):
    """Consumes `queue` (Celery task messages of promptq.run_chunk) into `runtime`."""

    def __init__(self, app: Celery, runtime: WorkerRuntime, queue: str) -> None:
        super().__init__(name="promptq-interactive", daemon=True)
        self.app, self.runtime, self.queue = app, runtime, queue
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._consume()
            except Exception:  # the broker went away: reconnect, as Celery does
                log.warning("interactive.consumer_error", queue=self.queue, exc_info=True)
                self._stop_event.wait(1.0)

    def _consume(self) -> None:
        with self.app.connection_for_read() as conn:
            queue = Queue(self.queue, routing_key=self.queue)  # type: ignore[no-untyped-call]
            with conn.Consumer(
                [queue], callbacks=[self._on_message], accept=["json"], prefetch_count=8
            ):
                log.info("interactive.consuming", queue=self.queue)
                while not self._stop_event.is_set():
                    try:
                        conn.drain_events(timeout=1.0)
                    except TimeoutError:
                        continue

    def _on_message(self, body: Any, message: Any) -> None:  # a kombu Message
        if message.headers.get("task") != TASK_RUN_CHUNK:
            log.warning("interactive.unknown_task", task=message.headers.get("task"))
            message.ack()
            return
        args = body[0] if isinstance(body, list | tuple) else []
        job_ids, step, alone = list(args[0]), int(args[1]), bool(args[2])
        try:
            self.runtime.admit(job_ids, step, alone)
        except Exception:  # the database is down: leave the message for later
            log.warning("interactive.admit_failed", jobs=len(job_ids), exc_info=True)
            message.requeue()
            self._stop_event.wait(1.0)
            return
        message.ack()
