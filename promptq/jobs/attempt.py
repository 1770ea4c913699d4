"""A job as a worker holds it for one attempt, and what the attempt produced."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = ["ClaimedJob", "Finished", "JobFailure", "JobOutcome"]


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
    #: When it stops waiting for provider capacity: its own deadline, or its batch's
    #: expiry (None: never).
    deadline: datetime | None = None

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
            deadline=row.deadline,
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
