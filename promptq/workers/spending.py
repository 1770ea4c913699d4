"""Cost control around a worker's attempt: which model serves a job (routing), whether the
response cache already has its answer (single flight across workers), the budget
reservation before a backend is called, and settling reservations once jobs end.

A cache problem (Redis down) never fails a job: the request goes to the backend."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
import structlog
from sqlalchemy import exc as sa_exc

from promptq.budgets import Ask, HeldJob, Reservation, max_cost, reserve_many, settle
from promptq.cache import CachedAnswer, Hit, Lead, ResponseCache, cache_key
from promptq.catalog import CacheMode, Catalog, ModelEntry
from promptq.config import Settings
from promptq.db import Database
from promptq.errors import TerminalError, model_not_found_message
from promptq.jobs import ClaimedJob, JobErrorCode, JobOutcome
from promptq.router import NoRoute, plan_route
from promptq.scheduler.health import ModelHealth
from promptq.workers.completion import Completion

__all__ = ["LeaseLost", "Paid", "Plan", "Spending", "Ticket", "mark", "may_serve"]

log = structlog.get_logger(__name__)

_WAIT_FIRST = 0.05
_WAIT_MAX = 0.5
_SETTLE_EVERY = 0.2
_SWEEP_EVERY = 5.0


class LeaseLost(Exception):
    """The job's lease was lost while it waited for budget."""


@dataclass(frozen=True)
class Plan:
    """The models to try for a job, in order, and when to move on to the next."""

    chain: list[ModelEntry]
    escalate_on: tuple[str, ...] = ()

    def escalates(self, step: int, reason: str) -> bool:
        """Whether an answer of model `step` ending for `reason` moves on."""
        return step + 1 < len(self.chain) and reason in self.escalate_on


@dataclass
class Paid:
    """Answers paid for and then escalated past: their tokens and cost stay on the job."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    served: list[str] = field(default_factory=list)

    def add(self, entry: ModelEntry, completion: Completion) -> None:
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cost_usd += entry.cost(completion.prompt_tokens, completion.completion_tokens)
        self.served.append(entry.name)


@dataclass
class Ticket:
    """What the cache said about one request: its answer, or the lead on fetching it."""

    answer: CachedAnswer | None = None
    lead: Lead | None = None
    kind: str = "exact"
    semantic: tuple[str, str, Any] | None = None  # group, text, embedding


class Spending:
    """One per worker process, on the runtime's loop."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        db: Database,
        health: ModelHealth | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.db = db
        # Traffic control's view of which models can take a call now (remote workers).
        self.health = health
        # Callers wait for a pooled connection rather than fail when hundreds of jobs
        # look up the cache at once.
        self._redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=64,
                timeout=10,
                socket_connect_timeout=2,
                socket_timeout=5,
            )
        )
        self.cache = ResponseCache(
            self._redis, lock_seconds=max(30.0, 2 * settings.request_timeout_seconds)
        )
        self._semantic: Any = None
        self._freed = False  # reservations were settled here since the last wake-up
        self._asks: dict[str, list[tuple[Ask, asyncio.Future[Reservation]]]] = {}
        self._draining: set[str] = set()
        self._drainers: set[asyncio.Task[None]] = set()
        self._settled = asyncio.Event()
        self.counters = {"cache_hits": 0, "budget_waits": 0, "budget_exceeded": 0, "settled": 0}

    # -- routing ------------------------------------------------------------------------
    async def plan(self, job: ClaimedJob) -> Plan:
        """The models that may serve `job`; TerminalError if none can. A router's
        candidates that are unhealthy or out of capacity now come last."""
        entry = self.catalog.get(job.model)
        if entry is not None:
            return Plan([entry])
        router = self.catalog.routers.get(job.model)
        if router is None:
            raise TerminalError(JobErrorCode.MODEL_NOT_FOUND, model_not_found_message(job.model))
        ready: set[str] | None = None
        if self.health is not None:
            candidates = (self.catalog[name] for name in router.candidates)
            ready = await self.health.ready_among(candidates)
        try:
            route = plan_route(
                self.catalog,
                router,
                job.body,
                job.task,
                self.settings.default_completion_tokens,
                healthy=(lambda _: True) if ready is None else (lambda e: e.name in ready),
            )
        except NoRoute as exc:
            raise TerminalError(JobErrorCode.NO_MODEL_FITS, exc.message) from None
        return Plan(route.chain, router.escalate_on)

    # -- the response cache -------------------------------------------------------------
    async def lookup(self, job: ClaimedJob, entry: ModelEntry) -> Ticket:
        """The cached answer for this request on `entry`, or the lead on fetching it (or
        nothing to do with the cache)."""
        if entry.cache is CacheMode.OFF or job.cache_opt_out:
            return Ticket()
        key = cache_key(job.tenant, entry.name, job.body)
        try:
            found = await self.cache.lookup(key, self.settings.request_timeout_seconds)
            if isinstance(found, Hit):
                return Ticket(found.answer)
            if entry.cache is CacheMode.SEMANTIC:
                return await self._semantic_lookup(job, entry, found)
            return Ticket(lead=found)
        except Exception as exc:  # Redis trouble: go without the cache
            log.warning("cache.unavailable", job_id=job.id, error=repr(exc)[:200])
            return Ticket()

    async def _semantic_lookup(self, job: ClaimedJob, entry: ModelEntry, lead: Lead) -> Ticket:
        from promptq.semantic_cache import Embedder, SemanticCache, group_key, prompt_text

        if self._semantic is None:
            self._semantic = SemanticCache(self._redis, Embedder())
        group, text = group_key(job.tenant, entry.name, job.body), prompt_text(job.body)
        match, vector = await self._semantic.find(group, text, entry.semantic_threshold)
        if match is not None:
            answer = await self.cache.get(match.exact_key)
            if answer is not None:
                await self.cache.store(lead, answer, entry.cache_ttl_seconds)
                return Ticket(answer, kind="semantic")
            await self._semantic.forget(group, match.exact_key)
        return Ticket(lead=lead, semantic=(group, text, vector))

    async def remember(
        self,
        ticket: Ticket,
        job: ClaimedJob,
        entry: ModelEntry,
        completion: Completion,
        response: dict[str, Any],
    ) -> None:
        """Keep a fresh answer for the requests that will ask the same."""
        if ticket.lead is None:
            return
        answer = CachedAnswer(
            content=completion.content,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            response=response,
            source_job_id=job.id,
        )
        try:
            await self.cache.store(ticket.lead, answer, entry.cache_ttl_seconds)
            if ticket.semantic is not None and self._semantic is not None:
                group, text, vector = ticket.semantic
                await self._semantic.add(
                    group, text, vector, ticket.lead.key, entry.cache_ttl_seconds
                )
        except Exception as exc:
            log.warning("cache.store_failed", job_id=job.id, error=repr(exc)[:200])
        ticket.lead = None

    async def abandon(self, ticket: Ticket) -> None:
        """No answer came: let another request with the same key fetch it."""
        if ticket.lead is not None:
            with contextlib.suppress(Exception):
                await self.cache.abandon(ticket.lead)
            ticket.lead = None

    def cached_outcome(
        self, ticket: Ticket, entry: ModelEntry, paid: Paid, ttft_ms: float | None = None
    ) -> JobOutcome:
        """A cache hit as the job's result: billed 0, what it saved recorded."""
        answer = ticket.answer
        assert answer is not None
        response = mark(
            answer.response, entry, paid, cached=True, kind=ticket.kind, source=answer.source_job_id
        )
        self.counters["cache_hits"] += 1
        return JobOutcome(
            content=answer.content,
            finish_reason=answer.finish_reason,
            prompt_tokens=paid.prompt_tokens + answer.prompt_tokens,
            completion_tokens=paid.completion_tokens + answer.completion_tokens,
            cost_usd=paid.cost_usd,
            response=response,
            ttft_ms=ttft_ms,
            cached=True,
            saved_usd=entry.cost(answer.prompt_tokens, answer.completion_tokens),
        )

    # -- budgets ------------------------------------------------------------------------
    async def reserve(self, job: ClaimedJob, entry: ModelEntry) -> None:
        """Hold the most `job` can cost on `entry` against its budget, waiting while only
        other jobs' reservations stand in the way. TerminalError `budget_exceeded` when
        the spend alone leaves too little; LeaseLost if the job was taken away."""
        if job.budget_id is None:
            return
        # Traffic control may serve the job on a fallback: hold the most any of them costs.
        amount = max(
            max_cost(model, job.body, self.settings.default_completion_tokens)
            for model in may_serve(self.catalog, entry)
        )
        if amount <= 0:  # a model priced at zero never consumes budget
            return
        held = HeldJob(job.id, job.attempt, job.owner)
        delay = _WAIT_FIRST
        while True:
            outcome = await self._try_reserve(held, job.budget_id, amount)
            if outcome is Reservation.RESERVED:
                return
            if outcome is Reservation.LOST:
                raise LeaseLost(job.id)
            if outcome is Reservation.EXHAUSTED:
                self.counters["budget_exceeded"] += 1
                raise TerminalError(
                    JobErrorCode.BUDGET_EXCEEDED,
                    f"The key's budget has less than the {amount:.6f} USD this request may "
                    f"cost on {entry.name} left this period; raise it, then retry the batch.",
                )
            if delay == _WAIT_FIRST:
                self.counters["budget_waits"] += 1
            # Others' reservations settle within ~0.2 s: wake at the next settlement here,
            # or after `delay` (settlements elsewhere).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), delay)
            delay = min(delay * 2, _WAIT_MAX)

    async def _try_reserve(self, held: HeldJob, budget_id: str, amount: Decimal) -> Reservation:
        # Asks for one budget are sent together: one transaction (and one connection) for
        # all the jobs of this process that are waiting for it.
        future: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        self._asks.setdefault(budget_id, []).append((Ask(held, amount), future))
        if budget_id not in self._draining:
            self._draining.add(budget_id)
            task = asyncio.get_running_loop().create_task(self._drain(budget_id))
            self._drainers.add(task)
            task.add_done_callback(self._drainers.discard)
        return await future

    async def _drain(self, budget_id: str) -> None:
        try:
            while self._asks.get(budget_id):
                waiting = self._asks.pop(budget_id)[:]
                try:
                    async with self.db.session() as session:
                        outcomes = await reserve_many(session, budget_id, [a for a, _ in waiting])
                except sa_exc.DBAPIError as exc:  # a reason to wait, not to fail the jobs
                    log.warning("budget.reserve_failed", jobs=len(waiting), error=str(exc)[:200])
                    outcomes = [Reservation.WAIT] * len(waiting)
                except Exception as exc:
                    for _, future in waiting:
                        if not future.done():
                            future.set_exception(exc)
                    raise
                for (_, future), outcome in zip(waiting, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._draining.discard(budget_id)

    def finished(self, job: ClaimedJob) -> None:
        """The job ended here; its reservation was settled with its result (in the result
        write's transaction): the jobs waiting for budget try again soon."""
        if job.budget_id is not None:
            self._freed = True
            self.counters["settled"] += 1

    async def settler(self) -> None:
        """Wake the jobs waiting for budget after reservations were settled here, and now
        and then settle those of any job that ended elsewhere (cancelled, expired, failed by
        the sweeper, or whose result this process could not store)."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + _SWEEP_EVERY
        while True:
            await asyncio.sleep(_SETTLE_EVERY)
            settled = 0
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + _SWEEP_EVERY
                try:
                    async with self.db.session() as session:
                        settled = await settle(session)
                except Exception:
                    log.exception("budget.settle_failed")
                self.counters["settled"] += settled
            if settled or self._freed:
                self._freed = False
                self._settled.set()  # wake the jobs waiting for budget
                self._settled = asyncio.Event()

    async def close(self) -> None:
        """Let go of Redis."""
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()


def may_serve(catalog: Catalog, entry: ModelEntry) -> list[ModelEntry]:
    """`entry` and the models traffic control may serve its jobs on instead (fallbacks and
    context-window fallbacks): a budget reservation holds the most any of them costs."""
    names = [*entry.fallbacks, *entry.context_window_fallbacks]
    return [entry, *(catalog[name] for name in names if name in catalog)]


def mark(
    response: dict[str, Any],
    entry: ModelEntry,
    paid: Paid,
    *,
    cached: bool,
    kind: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The response body with promptq's extension object: which model served it, whether
    it came from the cache, and the models escalated past."""
    extension: dict[str, Any] = {"cached": cached, "served_by": entry.name}
    if cached:
        extension.update(cache=kind, cached_from_job=source)
    if paid.served:
        extension["escalated_from"] = list(paid.served)
    return {**response, "promptq": extension}
