"""Provider traffic control for one job: pick a deployment, wait for shared capacity and
a closed circuit, call, feed the answer back, and fall back to other models.

Back-pressure, not failure: waiting for capacity, a 429 and an open circuit make the job
wait and never cost it an attempt. Provider faults (5xx, timeouts, resets) have their own
budget (`fault_max_retries`, exponential backoff with jitter); when it is spent, or every
deployment's circuit is open, the model's `fallbacks` are tried in order. A prompt too
long for the model goes to its `context_window_fallbacks`. A job with a deadline (a native
job's own, a batch line's batch expiry) stops waiting there and is never sent after it:
DeadlineExceeded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from promptq.backoff import backoff_delay
from promptq.catalog import Catalog, Deployment, ModelEntry
from promptq.config import Settings
from promptq.errors import DeadlineExceeded, RetryableError, TerminalError
from promptq.jobs import Deadline, JobErrorCode
from promptq.scheduler.admission import AdmissionGate, Permit, WaitExpired
from promptq.scheduler.breaker import BreakerSettings, CircuitBreaker, Gate
from promptq.scheduler.deployments import choose_deployment, limits_of
from promptq.scheduler.rate_headers import RateSignal
from promptq.scheduler.rate_limit import DeploymentLimits, RateLimiter, RateLimitSettings
from promptq.tokens import count_prompt_tokens, max_completion_tokens
from promptq.workers.completion import Completion, JobRequest
from promptq.workers.remote_worker import ProviderRateLimited, RemoteBackend

__all__ = ["Served", "TrafficControl", "TrafficJob", "traffic_redis"]

log = structlog.get_logger(__name__)
#: Called with a waiting reason when a job starts to wait, and None when it goes on.
OnWait = Callable[[str | None], Awaitable[None]]
BackendFor = Callable[[ModelEntry], Awaitable[RemoteBackend]]
_CIRCUIT_POLL = 1.0
_FAULT_MEMORY = 60.0  # seconds after a fault during which successes are reported
_NO_SIGNAL = RateSignal()
_CLOSED_CACHE = 0.5  # seconds a closed circuit is trusted without asking Redis
_GO = Gate(allowed=True, wait=0.0, probe=False)


@dataclass(frozen=True)
class TrafficJob:
    """What traffic control needs to know of a job."""

    id: str
    attempt: int
    body: dict[str, object]
    priority: int = 5
    interactive: bool = False
    band: int = 5
    #: When it stops waiting (None: never), and the code it then ends with.
    deadline: Deadline | None = None

    def left(self) -> float | None:
        """Seconds until its deadline (None: it has none)."""
        return None if self.deadline is None else self.deadline.left()

    def expired(self, waiting_for: str) -> DeadlineExceeded:
        """The error that ends it once its deadline passed while it waited."""
        assert self.deadline is not None, "a job without a deadline never expires"
        return self.deadline.expired(waiting_for)

    def check(self, waiting_for: str) -> float | None:
        """Seconds left before its deadline; DeadlineExceeded if none are."""
        return None if self.deadline is None else self.deadline.check(waiting_for)


@dataclass(frozen=True)
class Served:
    """A completion and the model that served it (usage is priced at that model)."""

    completion: Completion
    entry: ModelEntry
    deployment: str


def traffic_redis(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client for traffic control: hundreds of waiting jobs share a few connections,
    queueing for one rather than failing when all are busy."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=None
    )
    return aioredis.Redis(connection_pool=pool)


class _FallBack(Exception):
    """This model cannot serve the job now: try the next fallback."""


async def _no_wait(reason: str | None) -> None:
    return None


class _Reporter:
    """Passes a job's waiting reason on only when it changes (and logs it)."""

    def __init__(self, job_id: str, on_wait: OnWait) -> None:
        self.job_id = job_id
        self.on_wait = on_wait
        self.reason: str | None = None

    async def __call__(self, reason: str | None) -> None:
        if reason == self.reason:
            return
        self.reason = reason
        if reason is not None:
            log.info("job.waiting", job_id=self.job_id, reason=reason)
        await self.on_wait(reason)


class TrafficControl:
    """One per remote worker process, on the runtime's event loop."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        redis: aioredis.Redis,
        backend_for: BackendFor,
        on_answer: Callable[[ModelEntry, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.redis = redis
        self.limiter = RateLimiter(
            redis,
            RateLimitSettings(
                burst_seconds=settings.rate_limit_burst_seconds,
                margin=settings.rate_limit_margin,
                bulk_reserve=settings.bulk_reserve,
                slot_ttl=settings.request_timeout_seconds + 60,
            ),
        )
        self.breaker = CircuitBreaker(
            redis,
            BreakerSettings(
                failure_threshold=settings.breaker_failure_threshold,
                cooldown_seconds=settings.breaker_cooldown_seconds,
                cooldown_max=settings.breaker_cooldown_max_seconds,
            ),
        )
        self.gate = AdmissionGate(self.limiter)
        self._backend_for = backend_for
        # Told every provider answer: ok, rate_limited, retryable_error, terminal_error.
        self._on_answer = on_answer or (lambda entry, outcome: None)
        self.counters = {"calls": 0, "rate_limited": 0, "faults": 0, "fallbacks": 0}
        self._faulted_at: dict[str, float] = {}  # deployment -> when this process saw a fault
        # Undeclared deployments that answered 429 or reported their limits here: from then
        # on they are admitted through Redis, like declared ones.
        self._shared: set[str] = set()
        self._closed_until: dict[str, float] = {}  # deployment -> trust "closed" until
        # A breaker question on its way to Redis, per deployment: the calls that need the
        # answer meanwhile wait for it instead of asking too (dozens would, at once).
        self._asking: dict[str, asyncio.Future[Gate]] = {}
        self._backends: dict[str, RemoteBackend] = {}
        self._limits: dict[str, DeploymentLimits] = {}

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def run(self, job: TrafficJob, entry: ModelEntry, on_wait: OnWait = _no_wait) -> Served:
        """Serve `job` on `entry` or its fallbacks; raises TerminalError or, once every
        model's fault budget is spent, RetryableError."""
        chain = [entry.name, *entry.fallbacks]
        report = _Reporter(job.id, on_wait)
        context_fallen = False
        index = 0
        while True:
            model = self.catalog[chain[index]]
            last = index == len(chain) - 1
            try:
                return await self._serve_on(job, model, report, may_fall_back=not last)
            except _FallBack:
                self.counters["fallbacks"] += 1
                log.info("job.fallback", job_id=job.id, model=model.name, to=chain[index + 1])
                index += 1
            except TerminalError as exc:
                if exc.code != JobErrorCode.CONTEXT_LENGTH_EXCEEDED or context_fallen:
                    raise
                if not model.context_window_fallbacks:
                    raise
                context_fallen = True
                chain, index = list(model.context_window_fallbacks), 0
                log.info("job.context_fallback", job_id=job.id, model=model.name, to=chain[0])

    async def _serve_on(
        self, job: TrafficJob, model: ModelEntry, report: _Reporter, *, may_fall_back: bool
    ) -> Served:
        faults = 0
        while True:
            deployment = await choose_deployment(model, self.limiter, self.breaker, self.gate)
            if deployment is None:
                await self._circuit_open(job, report, may_fall_back)
                continue
            # The call's permit (replaced when a 429 sends it back to admission); whatever
            # ends the call, a crash or a cancel included, gives it back, so this process's
            # slow start and lanes never leak capacity.
            held = [await self._admit(job, model, deployment, report)]
            try:
                gate = await self._allow(str(deployment.name))
                if not gate.allowed:  # opened while we waited for capacity
                    await self.gate.settle(held[0], None)
                    await self._circuit_open(job, report, may_fall_back, gate.wait)
                    continue
                job.check(report.reason or "rate_limited")  # never sent past its deadline
                try:
                    completion = await self._call(job, model, deployment, held, report, gate.probe)
                except RetryableError as exc:
                    faults += 1
                    await self._fault(job, model, exc, faults, may_fall_back)
                    continue
                return Served(completion, model, str(deployment.name))
            finally:
                await self._give_back(held[0])

    async def _give_back(self, permit: Permit) -> None:
        if permit.settled:
            return
        try:
            await self.gate.settle(permit, None)
        except Exception:  # Redis down: its slot expires by its TTL there
            log.warning("rate_limit.settle_failed", slot=permit.slot_id, exc_info=True)

    async def _admit(
        self, job: TrafficJob, model: ModelEntry, deployment: Deployment, report: _Reporter
    ) -> Permit:
        limits = self._limits.get(str(deployment.name))
        if limits is None:
            limits = self._limits[str(deployment.name)] = limits_of(deployment)
        try:
            if limits.adaptive and limits.key not in self._shared:
                s = self.limiter.settings
                local = await self.gate.acquire_local(
                    limits,
                    int(s.adaptive_start),
                    int(s.adaptive_max),
                    band=job.band,
                    priority=job.priority,
                    interactive=job.interactive,
                    max_wait=job.check(report.reason or "concurrency"),
                )
                if local is not None:
                    return local
            tokens = count_prompt_tokens(model, job.body) + max_completion_tokens(
                model, job.body, self.settings.default_completion_tokens
            )
            permit = await self.gate.acquire(
                limits,
                tokens,
                band=job.band,
                priority=job.priority,
                slot_id=f"{job.id}:{uuid.uuid4().hex[:8]}",
                interactive=job.interactive,
                on_wait=report,
                max_wait=job.check(report.reason or "rate_limited"),
            )
        except WaitExpired:
            raise job.expired(report.reason or "rate_limited") from None
        await report(None)
        return permit

    async def _call(
        self,
        job: TrafficJob,
        model: ModelEntry,
        deployment: Deployment,
        held: list[Permit],
        report: _Reporter,
        probe: bool,
    ) -> Completion:
        """One provider call; a 429 pauses the deployment and the call waits to go again."""
        backend = self._backends.get(model.name)
        if backend is None:
            backend = self._backends[model.name] = await self._backend_for(model)
        request = JobRequest(
            job.id, job.attempt, model.name, model.upstream_name, dict(job.body), job.priority
        )
        key = str(deployment.name)
        self.counters["calls"] += 1
        while True:
            permit = held[0]
            try:
                completion = await backend.complete_via(deployment, request)
            except ProviderRateLimited as exc:
                self._on_answer(model, "rate_limited")
                await self.gate.settle(permit, None)
                self.counters["rate_limited"] += 1
                await self._share(key)
                hint = self.gate.local_in_flight(key) + 1 if permit.local else 0
                pause = await self.limiter.observe(
                    permit.limits, exc.signal, limited=True, in_flight=hint
                )
                log.info("job.rate_limited", job_id=job.id, deployment=key, pause=pause)
                held[0] = await self._admit(job, model, deployment, report)
                continue
            except TerminalError:
                self._on_answer(model, "terminal_error")
                await self.gate.settle(permit, None)
                await self._answered(key, probe)  # it answered: the provider is up
                raise
            except RetryableError:
                self._on_answer(model, "retryable_error")
                await self.gate.settle(permit, None)
                self._faulted_at[key] = time.monotonic()
                self._closed_until.pop(key, None)
                await self.breaker.record(key, ok=False)
                raise
            break
        self._on_answer(model, "ok")
        await self.gate.settle(permit, completion.prompt_tokens + completion.completion_tokens)
        await self._answered(key, probe)
        signal = completion.extra.get("rate_signal")
        if isinstance(signal, RateSignal) and (signal != _NO_SIGNAL or key in self._shared):
            if signal.limit_requests or signal.limit_tokens:
                await self._share(key)
            await self.limiter.observe(permit.limits, signal, limited=False)
        return completion

    async def _share(self, key: str) -> None:
        if key not in self._shared:
            self._shared.add(key)
            await self.gate.share(key)

    async def _allow(self, key: str) -> Gate:
        # A closed circuit is trusted for a moment without asking Redis again: at most
        # that long of calls go to a deployment another process has just opened.
        if time.monotonic() < self._closed_until.get(key, 0.0):
            return _GO
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.ensure_future(self._ask_breaker(key))
            asking.add_done_callback(lambda _: self._asking.pop(key, None))
            return await asyncio.shield(asking)
        gate = await asyncio.shield(asking)
        if gate.allowed and not gate.probe:
            return _GO
        # Open, or half-open with a probe granted to the call that asked: ask for this one.
        return await self._ask_breaker(key)

    async def _ask_breaker(self, key: str) -> Gate:
        try:
            gate = await self.breaker.allow(key)
        except RedisError:  # the shared state is out of reach: the provider itself decides
            log.warning("breaker.redis_error", deployment=key, exc_info=True)
            return _GO
        if gate.allowed and not gate.probe:
            self._closed_until[key] = time.monotonic() + _CLOSED_CACHE
        return gate

    async def _answered(self, key: str, probe: bool) -> None:
        # A success counts for the breaker when it is a probe, or when faults were seen
        # lately (the failure ratio needs both); with no fault in sight the round trip to
        # Redis is saved.
        if probe or time.monotonic() - self._faulted_at.get(key, -_FAULT_MEMORY) < _FAULT_MEMORY:
            await self.breaker.record(key, ok=True)

    async def _fault(
        self,
        job: TrafficJob,
        model: ModelEntry,
        exc: RetryableError,
        faults: int,
        may_fall_back: bool,
    ) -> None:
        self.counters["faults"] += 1
        if faults > self.settings.fault_max_retries:
            if may_fall_back:
                raise _FallBack()
            message = f"{exc.message} (gave up after {faults} provider faults)"
            raise RetryableError(exc.code, message, exc.provider_status) from exc
        delay = backoff_delay(
            faults, exc, self.settings.retry_base_seconds, self.settings.retry_max_seconds
        )
        left = job.left()
        if left is not None and delay >= left:  # the backoff would outlast the deadline
            raise job.expired(f"{exc.code} backoff") from exc
        log.info(
            "job.provider_fault",
            job_id=job.id,
            model=model.name,
            code=exc.code,
            faults=faults,
            delay=round(delay, 3),
        )
        await asyncio.sleep(delay)

    async def _circuit_open(
        self, job: TrafficJob, report: _Reporter, may_fall_back: bool, wait: float = 0.0
    ) -> None:
        if may_fall_back:
            raise _FallBack()
        left = job.check("circuit_open")
        await report("circuit_open")
        pause = min(max(wait, 0.05), _CIRCUIT_POLL)
        await asyncio.sleep(pause if left is None else min(pause, left))
