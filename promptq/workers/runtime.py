"""The worker runtime: one event loop per worker process that holds the backends (pooled
HTTP client or vLLM engine), admits micro-batches from Celery, and runs their jobs
concurrently under leases."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.backoff import backoff_delay
from promptq.catalog import Catalog, ModelEntry
from promptq.config import Settings
from promptq.db import Database
from promptq.errors import AttemptError, DeadlineExceeded, RetryableError, TerminalError
from promptq.jobs import (
    ClaimedJob,
    JobErrorCode,
    JobFailure,
    JobOutcome,
    claim,
    expire_queued,
    release,
    retry,
)
from promptq.metrics import JOBS_FINISHED
from promptq.queues import BULK_BAND, INTERACTIVE_BAND, queue_step
from promptq.scheduler.health import ModelHealth
from promptq.workers import side_tasks
from promptq.workers.completion import (
    Completion,
    JobRequest,
    ModelClient,
    chat_completion_body,
)
from promptq.workers.remote_worker import RemoteBackend
from promptq.workers.result_writer import ResultWriter
from promptq.workers.spending import LeaseLost, Paid, Spending, Ticket, mark
from promptq.workers.supervisor import Supervisor
from promptq.workers.telemetry import JobTelemetry, answer_outcome
from promptq.workers.traffic import TrafficControl, TrafficJob, traffic_redis
from promptq.workers.waiting import WaitingNotes, expire_window

__all__ = ["BackendFactory", "WorkerRuntime", "has_room", "worker_id"]

log = structlog.get_logger(__name__)
T = TypeVar("T")
BackendFactory = Callable[[ModelEntry], Awaitable[ModelClient]]
#: A provider call's end: the job (its attempt may have moved on), the answer or the error,
#: and the model that served it; None when the lease was lost meanwhile.
Called = tuple[ClaimedJob, Completion | AttemptError, ModelEntry] | None


def has_room(
    step: int, alone: bool, *, running: int, admitting: int, alone_running: bool, max_in_flight: int
) -> bool:
    """Admission: whether a chunk at Redis priority `step` may be claimed now. Nothing while
    a suspected poison job runs alone; such a job (`alone`) only when nothing else runs or
    is being admitted; interactive chunks at once; bulk chunks while under max_in_flight."""
    if alone_running:
        return False
    if alone:
        return not running and not admitting
    return step < BULK_BAND or running < max_in_flight


def worker_id(kind: str) -> str:
    """A lease owner name unique to this process: kind@host:pid."""
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


class WorkerRuntime:
    """Runs claimed jobs on a private event loop; Celery threads call `admit`, or
    `run_until_idle` drains the queues in-process (burst mode).

    Its side tasks (heartbeat, batch checker, result writer) are supervised: if one ends,
    `on_death(reason)` is called (the launcher stops the worker process) and
    `run_until_idle` raises WorkerDied."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        make_backend: BackendFactory,
        *,
        kind: str,
        max_in_flight: int,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        on_death: Callable[[str], None] | None = None,
        traffic: bool = False,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.kind = kind
        self.owner = worker_id(kind)
        self.max_in_flight = max_in_flight
        self.supervisor = Supervisor(self.owner, on_death or (lambda _: None))
        self._make_backend = make_backend
        self._on_stop = on_stop
        self._stopped = False
        self._backends: dict[str, ModelClient] = {}
        self._running: dict[str, ClaimedJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the running jobs
        self.batches_to_check: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="promptq-loop", daemon=True
        )
        self._capacity: asyncio.Condition | None = None
        self._alone = False  # a suspected poison job is running by itself
        self._admitting = 0  # chunks between "has room" and their claim
        self._db: Database | None = None
        self._redis: aioredis.Redis | None = None
        self._results: ResultWriter | None = None
        self._spending: Spending | None = None
        # Remote workers: shared rate limits, breakers and fallbacks around provider calls.
        self._use_traffic = traffic
        self.traffic: TrafficControl | None = None
        self._waiting: WaitingNotes | None = None
        self.counters = {"claimed": 0, "succeeded": 0, "failed": 0, "retried": 0, "lost": 0}
        self.telemetry = JobTelemetry(settings, self.owner, events=settings.job_task_events)

    # -- life cycle (called from Celery's threads) ---------------------------------
    def start(self, preload: list[ModelEntry] | None = None) -> None:
        """Start the loop and the database pool; load backends for `preload` now."""
        self._thread.start()
        self.call(self._start(preload or []))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the runtime's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def admit(self, job_ids: list[str], step: int, alone: bool = False) -> int:
        """Claim a chunk once there is room (interactive chunks at once); returns how many
        jobs were claimed. Blocks the calling Celery thread, not the loop.

        `alone` marks a job that was in flight at two worker losses (queues.runs_alone): it
        may be a poison prompt, so it runs with nothing else in flight and a crash costs
        only itself."""
        return self.call(self._admit(job_ids, step, alone))

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Let running jobs finish for up to `drain_seconds`, hand the rest back, close."""
        if self._thread.is_alive() and not self._stopped:
            self._stopped = True
            self.call(self._stop(drain_seconds))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def run_until_idle(self, queues: list[str], timeout: float | None = None) -> dict[str, int]:
        """Burst mode: claim and run the queued jobs of `queues` until none is left and
        nothing runs here; returns the counters. Raises WorkerDied if a side task ends."""
        return self.call(side_tasks.drain(self, queues), timeout)

    @property
    def in_flight(self) -> int:
        """Jobs claimed by this process and not yet finished."""
        return len(self._running)

    @property
    def running_ids(self) -> list[str]:
        """The jobs this process is running now, whose leases the heartbeat renews."""
        return list(self._running)

    @property
    def heartbeat_seconds(self) -> float:
        """How often leases are renewed and the worker's record in Redis is refreshed."""
        return side_tasks.beat_interval(self.settings)

    def snapshot(self) -> dict[str, Any]:
        """What the heartbeat logs and `promptq worker --check` shows."""
        return {"in_flight": self.in_flight, **self.counters}

    async def wait_idle(self) -> None:
        """Until no job claimed here is running."""
        assert self._capacity is not None
        async with self._capacity:
            await self._capacity.wait_for(lambda: not self._running)

    # -- on the loop -----------------------------------------------------------------
    async def _start(self, preload: list[ModelEntry]) -> None:
        self._capacity = asyncio.Condition()
        self._db = Database.from_settings(self.settings, pool_size=20)
        self._results = ResultWriter(
            self._db,
            max_delay=self.settings.result_flush_seconds,
            max_group=self.settings.result_group_size,
        )
        self._redis = aioredis.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        self._results.start()
        if self._use_traffic:
            redis = traffic_redis(self.settings.redis_url)
            self.traffic = TrafficControl(
                self.settings,
                self.catalog,
                redis,
                self._remote_backend,
                on_answer=self.telemetry.answered,
            )
            self._waiting = WaitingNotes(self._db)
        # Routers pick among the models traffic control says can take a call now.
        health = None
        if self.traffic is not None:
            health = ModelHealth(self.traffic.limiter, self.traffic.breaker)
        self._spending = Spending(self.settings, self.catalog, self._db, health)
        for entry in preload:
            await self._backend(entry)
        self.supervisor.watch("result_writer", self._results.task)
        self.supervisor.spawn("heartbeat", side_tasks.heartbeat(self))
        self.supervisor.spawn("batch_checker", side_tasks.batch_checker(self))
        self.supervisor.spawn("budget_settler", self.spending.settler())
        log.info("worker.started", owner=self.owner, max_in_flight=self.max_in_flight)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # A job's task (side tasks are the supervisor's).
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _backend(self, entry: ModelEntry) -> ModelClient:
        backend = self._backends.get(entry.name)
        if backend is None:
            backend = await self._make_backend(entry)
            self._backends[entry.name] = backend
        return backend

    async def _remote_backend(self, entry: ModelEntry) -> RemoteBackend:
        backend = await self._backend(entry)
        assert isinstance(backend, RemoteBackend), f"{entry.name} is not a remote model"
        return backend

    @property
    def db(self) -> Database:
        assert self._db is not None, "runtime not started"
        return self._db

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "runtime not started"
        return self._redis

    @property
    def spending(self) -> Spending:
        assert self._spending is not None, "runtime not started"
        return self._spending

    @property
    def results(self) -> ResultWriter:
        assert self._results is not None, "runtime not started"
        return self._results

    def _has_room(self, step: int, alone: bool) -> bool:
        return has_room(
            step,
            alone,
            running=len(self._running),
            admitting=self._admitting,
            alone_running=self._alone,
            max_in_flight=self.max_in_flight,
        )

    async def admit_here(self, job_ids: list[str], step: int, alone: bool) -> int:
        """`admit`, on the runtime's loop."""
        return await self._admit(job_ids, step, alone)

    async def _admit(self, job_ids: list[str], step: int, alone: bool) -> int:
        assert self._capacity is not None
        async with self._capacity:
            await self._capacity.wait_for(lambda: self._has_room(step, alone))
            self._alone = alone
            self._admitting += 1
        try:
            async with self.db.session() as session:
                jobs = await claim(session, job_ids, self.owner, self.settings.lease_seconds)
                # Some were taken elsewhere, finished, or are native jobs (never bulk) past
                # their deadline.
                if len(jobs) < len(job_ids) and step < BULK_BAND:
                    await self._expire_overdue(session, job_ids)
            for job in jobs:
                self._running[job.id] = job
                self.telemetry.started(job)
                self._spawn(self._run(job))
        finally:
            self._admitting -= 1
            await self._release_alone()
        self.counters["claimed"] += len(jobs)
        return len(jobs)

    async def _expire_overdue(self, session: AsyncSession, job_ids: list[str]) -> None:
        # A native job whose deadline passed while its message waited is not claimed: it
        # ends here, as the sweeper would end it, using no attempt.
        for job_id, model in await expire_queued(session, job_ids=job_ids):
            JOBS_FINISHED.labels(model or "", "expired", JobErrorCode.DEADLINE_EXCEEDED).inc()
            log.info("job.expired", job_id=job_id, code=JobErrorCode.DEADLINE_EXCEEDED)

    async def _run(self, job: ClaimedJob) -> None:
        try:
            await self._attempt(job)
        except Exception:  # a bug, not a provider error: the lease expires and it is retried
            log.exception("job.crashed", job_id=job.id, attempt=job.attempt)
        finally:
            self._running.pop(job.id, None)
            self.telemetry.ended(job.id)
            if job.batch_id:
                self.batches_to_check.add(job.batch_id)
            await self._release_alone()

    async def _release_alone(self) -> None:
        assert self._capacity is not None
        async with self._capacity:
            if not self._running:
                self._alone = False
            self._capacity.notify_all()

    async def _attempt(self, job: ClaimedJob) -> None:
        # Routing picks the models to try; per model the cache may answer, else the
        # budget is reserved and the backend called (retried); a cut-off or failed answer
        # moves on to the next model when the router says so. A batch line claimed after
        # its batch's window ended is not started.
        if job.deadline is not None and job.deadline.left() <= 0:
            await self._fail(job, job.deadline.expired("queued"))
            return
        try:
            plan = await self.spending.plan(job)
        except TerminalError as exc:
            await self._fail(job, exc)
            return
        current, paid = job, Paid()
        for step, entry in enumerate(plan.chain):
            ticket = await self.spending.lookup(current, entry)
            if ticket.answer is not None:
                await self._store(current, self.spending.cached_outcome(ticket, entry, paid))
                return
            called = await self._reserve_and_call(current, entry, ticket)
            if called is None:
                return  # the lease was lost: the job is someone else's now
            current, result, served = called
            if isinstance(result, AttemptError):
                final = result.code == "budget_exceeded" or isinstance(result, DeadlineExceeded)
                if not final and plan.escalates(step, "error"):
                    continue
                await self._fail(current, result)
                return
            response = result.extra.get("response") or chat_completion_body(
                current.id, served.name, result
            )
            await self.spending.remember(ticket, current, entry, result, response)
            if result.finish_reason == "length" and plan.escalates(step, "length"):
                paid.add(served, result)
                continue
            await self._succeed(current, served, result, response, paid)
            return

    async def _reserve_and_call(self, job: ClaimedJob, entry: ModelEntry, ticket: Ticket) -> Called:
        try:
            await self.spending.reserve(job, entry)
        except TerminalError as exc:
            await self.spending.abandon(ticket)
            return job, exc, entry
        except LeaseLost:
            await self.spending.abandon(ticket)
            return None
        if self.traffic is not None:
            called = await self._call_with_traffic(job, entry, self.traffic)
        else:
            called = await self._call(job, entry)
        if called is None or isinstance(called[1], AttemptError):
            await self.spending.abandon(ticket)
        return called

    async def _call(self, job: ClaimedJob, entry: ModelEntry) -> Called:
        # The backend, retried with backoff up to the job's max attempts; None if the lease
        # was lost meanwhile.
        backend = await self._backend(entry)
        current = job
        while True:
            request = JobRequest(
                current.id,
                current.attempt,
                entry.name,
                entry.upstream_name,
                current.body,
                # The queue step: the interactive band runs before bulk lines on the engine.
                queue_step(current.priority, interactive=current.batch_id is None),
                deadline=current.deadline,
            )
            try:
                completion = await backend.complete(request)
            except TerminalError as exc:
                self.telemetry.answered(entry, "terminal_error")
                return current, exc, entry
            except RetryableError as exc:
                self.telemetry.answered(entry, answer_outcome(exc))
                if current.attempt >= current.max_attempts:
                    message = f"{exc.message} (gave up after {current.attempt} attempts)"
                    return current, RetryableError(exc.code, message, exc.provider_status), entry
                delay = self._retry_delay(current, exc)
                if current.deadline is not None and delay >= current.deadline.left():
                    # The backoff would outlast the deadline (as traffic control's faults).
                    return current, current.deadline.expired(f"{exc.code} backoff"), entry
                nxt = await self._next_attempt(current, exc, delay)
                if nxt is None:
                    return None
                current = nxt
                continue
            self.telemetry.answered(entry, "ok")
            return current, completion, entry

    async def _call_with_traffic(
        self, job: ClaimedJob, entry: ModelEntry, traffic: TrafficControl
    ) -> Called:
        """The provider call under traffic control: waiting for capacity, 429s and open
        circuits cost no attempt; provider faults have their own budget inside
        `traffic.run`, so an error here is final (attempts are left for worker crashes).
        The served model may be one of `entry`'s fallbacks."""
        waiting = self._waiting
        assert waiting is not None

        async def on_wait(reason: str | None) -> None:
            waiting.note(job, reason)

        interactive = job.batch_id is None
        request = TrafficJob(
            id=job.id,
            attempt=job.attempt,
            body=job.body,
            priority=job.priority,
            interactive=interactive,
            band=INTERACTIVE_BAND if interactive else BULK_BAND,
            deadline=job.deadline,
        )
        try:
            served = await traffic.run(request, entry, on_wait)
        except (TerminalError, RetryableError) as exc:
            return job, exc, entry
        finally:
            waiting.forget(job.id)
        return job, served.completion, served.entry

    def _retry_delay(self, job: ClaimedJob, exc: RetryableError) -> float:
        return backoff_delay(
            job.attempt, exc, self.settings.retry_base_seconds, self.settings.retry_max_seconds
        )

    async def _next_attempt(
        self, job: ClaimedJob, exc: RetryableError, delay: float
    ) -> ClaimedJob | None:
        log.info(
            "job.retry", job_id=job.id, attempt=job.attempt, code=exc.code, delay=round(delay, 3)
        )
        self.counters["retried"] += 1
        await asyncio.sleep(delay)
        async with self.db.session() as session:
            nxt = await retry(session, job, self.settings.lease_seconds, exc.code, exc.message)
        if nxt is not None:
            self._running[job.id] = nxt
            self.telemetry.retried(nxt, exc.code, exc.message)
            self.telemetry.started(nxt)
        return nxt

    async def _succeed(
        self,
        job: ClaimedJob,
        entry: ModelEntry,
        completion: Completion,
        response: dict[str, Any],
        paid: Paid,
    ) -> None:
        # `entry` is the model that served the answer: usage is priced at it.
        outcome = JobOutcome(
            content=completion.content,
            finish_reason=completion.finish_reason,
            prompt_tokens=paid.prompt_tokens + completion.prompt_tokens,
            completion_tokens=paid.completion_tokens + completion.completion_tokens,
            cost_usd=paid.cost_usd
            + entry.cost(completion.prompt_tokens, completion.completion_tokens),
            response=mark(response, entry, paid, cached=False),
            ttft_ms=completion.ttft_ms,
            served_by=entry.name,
        )
        await self._store(job, outcome)

    async def _store(self, job: ClaimedJob, outcome: JobOutcome) -> None:
        stored = await self.results.write(job, outcome)
        self.spending.finished(job)
        self.counters["succeeded" if stored else "lost"] += 1
        if stored:
            self.telemetry.succeeded(job, outcome)
        if not stored:
            log.warning("job.lease_lost", job_id=job.id, attempt=job.attempt)

    async def _fail(self, job: ClaimedJob, exc: AttemptError) -> None:
        expired = isinstance(exc, DeadlineExceeded)
        failure = JobFailure(exc.code, exc.message, exc.provider_status, expired=expired)
        if expired and job.batch_id:  # past its batch's window: the batch expires now
            await expire_window(self.db, job.batch_id)
        stored = await self.results.write(job, failure)
        self.spending.finished(job)
        self.counters["failed" if stored else "lost"] += 1
        if stored:
            self.telemetry.failed(job, failure)
        log.info("job.failed", job_id=job.id, attempt=job.attempt, code=exc.code)

    async def _stop(self, drain_seconds: float) -> None:
        assert self._capacity is not None
        self.supervisor.expect_end()  # the result writer ends on purpose below
        try:
            async with self._capacity:
                await asyncio.wait_for(
                    self._capacity.wait_for(lambda: not self._running), drain_seconds
                )
        except TimeoutError:
            pass
        # Results that finished are stored before anything still running is handed back.
        await self.results.close()
        if self._running:
            async with self.db.session() as session:
                released = await release(session, list(self._running.values()))
            log.info("worker.released", jobs=len(released))
        for task in list(self._tasks):
            task.cancel()
        await self.supervisor.stop()
        await side_tasks.forget_beat(self)
        for backend in self._backends.values():
            await backend.aclose()
        await self.spending.close()
        if self.traffic is not None:
            await self.traffic.aclose()
        if self._on_stop is not None:
            await self._on_stop()
        await self.redis.aclose()
        await self.db.dispose()
        self.telemetry.close()
        log.info("worker.stopped", owner=self.owner, **self.snapshot())
