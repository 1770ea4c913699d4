"""A job as a worker holds it for one attempt, its deadline, and what the attempt
produced."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from promptq.errors import DeadlineExceeded
from promptq.jobs.codes import JobErrorCode

__all__ = ["ClaimedJob", "Deadline", "Finished", "JobFailure", "JobOutcome"]

T = TypeVar("T")


@dataclass(frozen=True)
class Deadline:
    """When a claimed job stops waiting (unix time), and the code it then ends with: a
    native job's own deadline (`deadline_exceeded`) or its batch's expiry
    (`batch_expired`). Shared by the remote worker's traffic control and the GPU engine."""

    at: float
    code: str = JobErrorCode.DEADLINE_EXCEEDED

    @classmethod
    def of(cls, at: datetime | None, *, batch_line: bool) -> Deadline | None:
        """The deadline of a job as its claim returns it (None: it has none)."""
        if at is None:
            return None
        code = JobErrorCode.BATCH_EXPIRED if batch_line else JobErrorCode.DEADLINE_EXCEEDED
        return cls(at.timestamp(), code)

    def left(self) -> float:
        """Seconds until the deadline (negative once it passed)."""
        return self.at - time.time()

    def expired(self, waiting_for: str) -> DeadlineExceeded:
        """The error that ends the job once its deadline passed while it waited."""
        what = (
            "The batch's completion window ended"
            if self.code == JobErrorCode.BATCH_EXPIRED
            else "The job's deadline passed"
        )
        return DeadlineExceeded(
            self.code, f"{what} before it could be sent (it waited: {waiting_for})."
        )

    def check(self, waiting_for: str) -> float:
        """Seconds left; DeadlineExceeded if none are."""
        left = self.left()
        if left <= 0:
            raise self.expired(waiting_for)
        return left

    async def within(self, awaitable: Awaitable[T], waiting_for: str) -> T:
        """Await `awaitable` until the deadline; past it, it is cancelled and
        DeadlineExceeded raised (a TimeoutError of its own passes through)."""
        left = self.left()
        if left <= 0:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never started: no "never awaited" warning
            raise self.expired(waiting_for)
        limit = asyncio.timeout(left)
        try:
            async with limit:
                return await awaitable
        except TimeoutError:
            if limit.expired():
                raise self.expired(waiting_for) from None
            raise


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds the lease on, for one attempt."""

    id: str
    tenant: str
    batch_id: str | None
    model: str
    body: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    owner: str
    webhook_url: str | None = None
    # For operators (metrics, Flower): the batch line's custom_id and the job's creation.
    custom_id: str | None = None
    created_at: datetime | None = None
    # Cost control: the budget it spends from, the client's cache opt-out, and the
    # request's metadata.task (a router matches it against models' capabilities).
    budget_id: str | None = None
    cache_opt_out: bool = False
    task: str | None = None
    #: When it stops waiting for a provider or an engine slot: its own deadline, or its
    #: batch's expiry (None: never).
    deadline: Deadline | None = None

    @classmethod
    def claimed(cls, row: Any, owner: str) -> ClaimedJob:
        """The job as the claim's RETURNING row describes it (`attempts` is this attempt)."""
        return cls(
            id=row.id,
            tenant=row.tenant,
            batch_id=row.batch_id,
            model=row.model or "",
            body=row.body or {},
            priority=row.priority,
            attempt=row.attempts,
            max_attempts=row.max_attempts,
            owner=owner,
            webhook_url=row.webhook_url,
            custom_id=row.custom_id,
            created_at=row.created_at,
            budget_id=row.budget_id,
            cache_opt_out=bool(row.cache_opt_out),
            task=_task(row.job_metadata),
            deadline=Deadline.of(row.deadline, batch_line=row.batch_id is not None),
        )

    def next_attempt(self) -> ClaimedJob:
        """The same lease, counted as the following attempt."""
        return replace(self, attempt=self.attempt + 1)


def _task(metadata: Any) -> str | None:
    # The request's metadata.task, which a router matches against models' capabilities.
    task = metadata.get("task") if isinstance(metadata, dict) else None
    return task if isinstance(task, str) else None


@dataclass(frozen=True)
class JobFailure:
    """What a failed final attempt stores on the job: a JobErrorCode, a message, and the
    provider's HTTP status if the provider refused it."""

    code: str
    message: str
    provider_status: int | None = None
    #: The job ends `expired` (its deadline passed while it waited), not `failed`.
    expired: bool = False


@dataclass(frozen=True)
class JobOutcome:
    """What a finished attempt stores on the job and in the ledger."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    response: dict[str, Any]
    ttft_ms: float | None = None
    # An answer replayed from the response cache: billed 0, `saved_usd` what it would
    # have cost.
    cached: bool = False
    saved_usd: Decimal | None = None
    #: The model that served the attempt, when a fallback did (usage is priced at it).
    served_by: str | None = None


#: A finished attempt: the job as claimed and what the attempt produced.
Finished = tuple[ClaimedJob, JobOutcome | JobFailure]
