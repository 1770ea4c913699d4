"""What a worker tells operators about each job it runs: Prometheus metrics, and Celery
task events so that Flower lists every job as a task of its own.

A job's task in Flower has the job's id as its uuid, the model as its name, the
custom_id and batch id as its arguments, its creation as "received", its real start,
runtime and outcome; a failed job is a failed task whose exception is `code: message`.
Only results the worker actually stored are reported, so Flower's succeeded and failed
counts are those of the jobs table. Events are buffered and published from a thread of
their own, several per Redis round trip, never on the runtime's event loop."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog

from promptq.catalog import Backend, Catalog, ModelEntry
from promptq.config import Settings
from promptq.constants import GPU_QUEUE_PREFIX
from promptq.errors import RateLimited, RetryableError
from promptq.jobs import ClaimedJob, JobFailure, JobOutcome
from promptq.metrics import (
    COST,
    IN_FLIGHT,
    JOB_DURATION,
    JOBS_FINISHED,
    PROVIDER_REQUESTS,
    QUEUE_WAIT,
    TOKENS,
    TTFT,
)

__all__ = ["JobTelemetry", "answer_outcome", "celery_hostname", "worker_description"]

log = structlog.get_logger(__name__)

#: How many events one publish carries at most, and how long one may wait to be sent.
_EVENT_BATCH = 200
_EVENT_FLUSH_SECONDS = 0.5


def answer_outcome(exc: RetryableError) -> str:
    """How a retryable failure counts in promptq_provider_requests_total."""
    return "rate_limited" if isinstance(exc, RateLimited) else "retryable_error"


def worker_description(
    kind: str, catalog: Catalog, queues: list[str], max_in_flight: int
) -> dict[str, Any]:
    """What Flower's worker page shows under Config as `promptq_worker`: the models this
    worker serves and how many jobs it runs at once."""
    gpu = [q.removeprefix(GPU_QUEUE_PREFIX) for q in queues if q.startswith(GPU_QUEUE_PREFIX)]
    remote = [e.name for e in catalog.values() if e.backend is not Backend.VLLM]
    return {
        "kind": kind,
        "models": gpu if kind == "gpu" else remote,
        "max_in_flight": max_in_flight,
        "queues": queues,
    }


def celery_hostname(owner: str) -> str:
    """The Celery node name of the worker whose lease owner is `owner`."""
    return owner.replace(":", "-")


@dataclass
class _Running:
    model: str
    started: float  # monotonic


class _EventSender:
    """Publishes queued events in batches from its own thread, with its own connection."""

    def __init__(self, settings: Settings, hostname: str) -> None:
        self._settings = settings
        self._hostname = hostname
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="promptq-events", daemon=True)
        self._thread.start()

    def send(self, event_type: str, **fields: Any) -> None:
        self._queue.put((event_type, fields))

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _next_batch(self) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
        batch: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + _EVENT_FLUSH_SECONDS
        while len(batch) < _EVENT_BATCH:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        from promptq.workers.celery_app import make_celery

        app = make_celery(self._settings)
        dispatcher: Any = None
        closed = False
        while not closed:
            batch, closed = self._next_batch()
            if not batch:
                continue
            try:
                if dispatcher is None:  # one connection, made again after a failure
                    dispatcher = app.events.Dispatcher(
                        app.connection_for_write(),
                        hostname=self._hostname,
                        buffer_group=["task"],
                        buffer_limit=_EVENT_BATCH + 1,
                    )
                for event_type, fields in batch:
                    dispatcher.send(event_type, **fields)
                dispatcher.flush()
            except Exception as exc:  # Flower misses these events; the jobs are unaffected
                log.warning("task_events.dropped", events=len(batch), error=str(exc))
                _close(dispatcher)
                dispatcher = None
        _close(dispatcher)


def _close(dispatcher: Any) -> None:
    if dispatcher is not None:
        try:
            dispatcher.close()
            dispatcher.connection.release()
        except Exception:  # closing a broken connection; nothing left to save
            pass


class _ModelMetrics:
    """One model's labelled metrics, looked up once (labels() takes a lock each call)."""

    def __init__(self, model: str) -> None:
        self.in_flight = IN_FLIGHT.labels(model)
        self.queue_wait = QUEUE_WAIT.labels(model)
        self.prompt_tokens = TOKENS.labels(model, "prompt")
        self.completion_tokens = TOKENS.labels(model, "completion")
        self.cost = COST.labels(model)
        self.succeeded = JOBS_FINISHED.labels(model, "succeeded", "")
        self.duration = JOB_DURATION.labels(model)
        self.ttft = TTFT.labels(model)


class JobTelemetry:
    """Called by the runtime, on its loop, at each step of a job."""

    def __init__(self, settings: Settings, owner: str, *, events: bool = True) -> None:
        self._running: dict[str, _Running] = {}
        self._models: dict[str, _ModelMetrics] = {}
        self._events = _EventSender(settings, celery_hostname(owner)) if events else None

    def _metrics(self, model: str) -> _ModelMetrics:
        metrics = self._models.get(model)
        if metrics is None:
            metrics = self._models[model] = _ModelMetrics(model)
        return metrics

    def _send(self, event_type: str, **fields: Any) -> None:
        if self._events is not None:
            self._events.send(event_type, **fields)

    def started(self, job: ClaimedJob) -> None:
        """The job was claimed here for an attempt."""
        first = job.id not in self._running
        metrics = self._metrics(job.model)
        if first:
            self._running[job.id] = _Running(job.model, time.monotonic())
            metrics.in_flight.inc()
        created = job.created_at.timestamp() if job.created_at else time.time()
        if first and job.attempt == 1 and job.created_at is not None:
            metrics.queue_wait.observe(max(time.time() - created, 0.0))
        self._send(
            "task-received",
            uuid=job.id,
            name=job.model,
            args=repr([job.custom_id]),
            kwargs=repr({"batch_id": job.batch_id, "attempt": job.attempt}),
            retries=job.attempt - 1,
            timestamp=created,
        )
        self._send("task-started", uuid=job.id)

    def answered(self, entry: ModelEntry, outcome: str) -> None:
        """The backend answered one request: ok, rate_limited, retryable_error or
        terminal_error."""
        PROVIDER_REQUESTS.labels(entry.name, entry.upstream_name, outcome).inc()

    def retried(self, job: ClaimedJob, code: str, message: str) -> None:
        """The attempt failed and the job will run again."""
        self._send("task-retried", uuid=job.id, exception=f"{code}: {message}", traceback="")

    def succeeded(self, job: ClaimedJob, outcome: JobOutcome) -> None:
        """The job's result was stored."""
        metrics = self._metrics(job.model)
        metrics.prompt_tokens.inc(outcome.prompt_tokens)
        metrics.completion_tokens.inc(outcome.completion_tokens)
        metrics.cost.inc(float(outcome.cost_usd))
        metrics.succeeded.inc()
        if outcome.ttft_ms is not None:
            metrics.ttft.observe(outcome.ttft_ms / 1000)
        runtime = self._duration(job)
        self._send(
            "task-succeeded",
            uuid=job.id,
            result=repr(
                {
                    "tokens": outcome.prompt_tokens + outcome.completion_tokens,
                    "cost_usd": str(outcome.cost_usd),
                }
            ),
            runtime=runtime,
        )

    def failed(self, job: ClaimedJob, failure: JobFailure) -> None:
        """The job's failure (or expiry) was stored."""
        outcome = "expired" if failure.expired else "failed"
        JOBS_FINISHED.labels(job.model, outcome, failure.code).inc()
        self._duration(job)
        self._send(
            "task-failed",
            uuid=job.id,
            exception=f"{failure.code}: {failure.message}",
            traceback="",
        )

    def ended(self, job_id: str) -> None:
        """The job left this worker (finished, lost, or handed back)."""
        running = self._running.pop(job_id, None)
        if running is not None:
            self._metrics(running.model).in_flight.dec()

    def _duration(self, job: ClaimedJob) -> float:
        running = self._running.get(job.id)
        seconds = time.monotonic() - running.started if running else 0.0
        self._metrics(job.model).duration.observe(seconds)
        return seconds

    def close(self) -> None:
        """Send what is buffered and stop the sender."""
        if self._events is not None:
            self._events.close()
