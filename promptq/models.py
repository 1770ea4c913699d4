"""The schema: every job, batch, file, usage record and API key is a row here.

Postgres is the source of truth (SQLite serves the embedded demo); Redis only delivers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "OPEN_JOB_STATUSES",
    "TERMINAL_BATCH_STATUSES",
    "TERMINAL_JOB_STATUSES",
    "ApiKey",
    "Base",
    "Batch",
    "BatchStatus",
    "Budget",
    "BudgetPeriod",
    "File",
    "FileLine",
    "FilePurpose",
    "IdempotencyKey",
    "Job",
    "JobStatus",
    "Reservation",
    "UsageRecord",
    "WebhookEvent",
    "WebhookStatus",
    "status_is",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always UTC-aware in Python, whatever the database keeps."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: keep one format, without an offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
Money = sa.Numeric(20, 10)


class JobStatus(StrEnum):
    """Where a job is in its life; the last four are terminal."""

    #: Stored and (to be) delivered to a worker queue.
    QUEUED = "queued"
    #: Claimed by a worker that holds its lease.
    RUNNING = "running"
    #: Finished with a result, usage and cost.
    SUCCEEDED = "succeeded"
    #: Finished with an error (invalid line, provider refusal, attempts exhausted).
    FAILED = "failed"
    #: Cancelled before it finished (by the client or its batch).
    CANCELLED = "cancelled"
    #: Its batch's completion window (or its own deadline) passed before it was sent.
    EXPIRED = "expired"


#: A job in these states may still run; the others are terminal and never change again.
OPEN_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)

TERMINAL_JOB_STATUSES = (
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.EXPIRED,
)


class BatchStatus(StrEnum):
    """The OpenAI batch lifecycle."""

    #: Input lines are being checked and turned into jobs.
    VALIDATING = "validating"
    #: Jobs are queued or running.
    IN_PROGRESS = "in_progress"
    #: Every job is terminal; the output and error files are being made.
    FINALIZING = "finalizing"
    #: Done; output and error files are ready.
    COMPLETED = "completed"
    #: No line of the input was valid.
    FAILED = "failed"
    #: The completion window passed; finished results are kept.
    EXPIRED = "expired"
    #: A cancel was asked for; running jobs are allowed to finish.
    CANCELLING = "cancelling"
    #: Cancelled; finished results are kept.
    CANCELLED = "cancelled"


TERMINAL_BATCH_STATUSES = (
    BatchStatus.COMPLETED,
    BatchStatus.FAILED,
    BatchStatus.EXPIRED,
    BatchStatus.CANCELLED,
)


class FilePurpose(StrEnum):
    """Why a file exists (OpenAI's names)."""

    #: A JSONL batch input uploaded by a client.
    BATCH = "batch"
    #: The successful lines of a batch, made by promptq.
    BATCH_OUTPUT = "batch_output"
    #: The failed lines of a batch, made by promptq.
    BATCH_ERROR = "batch_error"


def _enum(cls: type[StrEnum], name: str) -> sa.Enum:
    return sa.Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ApiKey(Base):
    """A client credential; only its SHA-256 is stored. Its tenant owns what it creates."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(sa.String(16))
    is_admin: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    webhook_url: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # This key's webhook signing secret (`whsec_<base64>`); kept as is, because signing
    # needs it. None on keys made before per-key secrets: the deployment's secret signs.
    webhook_secret: Mapped[str | None] = mapped_column(sa.String(100))
    # The secret before the last rotation, still sent alongside until the time below.
    webhook_secret_previous: Mapped[str | None] = mapped_column(sa.String(100))
    webhook_secret_previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BudgetPeriod(StrEnum):
    """When a budget's spend starts again from zero (UTC calendar boundaries)."""

    #: Every day at 00:00 UTC.
    DAY = "day"
    #: Every Monday at 00:00 UTC.
    WEEK = "week"
    #: The first day of every month at 00:00 UTC.
    MONTH = "month"
    #: Never: the budget is a total.
    TOTAL = "total"


class Budget(Base):
    """A spending limit for one API key, or (api_key_id NULL) the default of a tenant's
    keys that have none. Jobs reserve their maximum cost here before they run."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    api_key_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("api_keys.id", ondelete="CASCADE"), unique=True
    )
    # NULL: lifted (spend is still counted, nothing is refused).
    budget_usd: Mapped[Decimal | None] = mapped_column(Money)
    period: Mapped[BudgetPeriod] = mapped_column(_enum(BudgetPeriod, "budget_period"))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    spent_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    reserved_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Reservation(Base):
    """Money a job holds against its budget until it ends (then `budgets.settle` turns it
    into spend and deletes the row). No foreign key: a reservation outlives its job if the
    job is deleted, and is then given back."""

    __tablename__ = "reservations"

    job_id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    budget_id: Mapped[str] = mapped_column(sa.String(40), index=True)
    amount_usd: Mapped[Decimal] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class File(Base):
    """An uploaded batch input, or a batch's output or error file."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    purpose: Mapped[FilePurpose] = mapped_column(_enum(FilePurpose, "file_purpose"))
    filename: Mapped[str] = mapped_column(sa.String(500))
    bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    line_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    # Output and error files are views over their batch's jobs, made on read.
    batch_id: Mapped[str | None] = mapped_column(sa.String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FileLine(Base):
    """One line of an uploaded JSONL file: its text, stored at upload, parsed and checked
    when a batch over it is validated. The parsed columns are only filled in files made
    before that (they are read no more)."""

    __tablename__ = "file_lines"

    file_id: Mapped[str] = mapped_column(
        sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    line_no: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    raw: Mapped[str] = mapped_column(sa.Text)
    custom_id: Mapped[str | None] = mapped_column(sa.String(512))
    method: Mapped[str | None] = mapped_column(sa.String(16))
    url: Mapped[str | None] = mapped_column(sa.String(200))
    model: Mapped[str | None] = mapped_column(sa.String(200))
    body: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Set when the line cannot run: it becomes a failed job in the error file.
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)


class Batch(Base):
    """An OpenAI-style batch; its request counts are derived from its jobs."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), index=True)
    # Not a foreign key: a client may delete the input file, the batch keeps its id.
    input_file_id: Mapped[str] = mapped_column(sa.String(40))
    endpoint: Mapped[str] = mapped_column(sa.String(200))
    completion_window: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[BatchStatus] = mapped_column(_enum(BatchStatus, "batch_status"))
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=5)
    batch_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    output_file_id: Mapped[str | None] = mapped_column(sa.String(40))
    error_file_id: Mapped[str | None] = mapped_column(sa.String(40))
    webhook_url: Mapped[str | None] = mapped_column(sa.Text)
    # The batch whose failed lines this one re-runs (POST /v1/batches/{id}/retry).
    retry_of: Mapped[str | None] = mapped_column(sa.String(40))
    # Cost control: the submitting key and budget (copied to every line), the upper
    # bound of the batch's cost counted at creation, and the client's cache opt-out.
    api_key_id: Mapped[str | None] = mapped_column(sa.String(40))
    budget_id: Mapped[str | None] = mapped_column(sa.String(40))
    estimated_cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    cache_opt_out: Mapped[bool | None] = mapped_column(sa.Boolean)
    # The client's limit on the estimate, checked once the lines are read (validation).
    max_cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("ix_batches_status", "status"),)


#: The rows of ix_jobs_queued_deadline_at.
_QUEUED_WITH_DEADLINE = "status = 'queued' AND deadline_at IS NOT NULL"
#: The rows of ix_jobs_running_lease_expires_at: the jobs in flight.
_RUNNING = "status = 'running'"
#: The rows of ix_jobs_unsent and ix_jobs_queued_enqueued_at. No partial index may hold
#: every queued job: the claim (`id IN (...) AND status = 'queued'`) could then AND it
#: with the primary key, reading every queued line's entry (BENCHMARKS.md, "scale").
_QUEUED_UNSENT = "status = 'queued' AND enqueued_at IS NULL"
_QUEUED_SENT = "status = 'queued' AND enqueued_at IS NOT NULL"


def status_is(status: JobStatus) -> sa.ColumnElement[bool]:
    """`jobs.status = '<status>'` with the value written into the SQL, not bound: only a
    constant lets Postgres use a partial index whose predicate names the status."""
    return Job.status == sa.literal_column(f"'{status.value}'")


class Job(Base):
    """One prompt: a native job or one line of a batch. Every state change is a guarded UPDATE."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200))
    batch_id: Mapped[str | None] = mapped_column(sa.ForeignKey("batches.id", ondelete="CASCADE"))
    line_no: Mapped[int | None] = mapped_column(sa.Integer)
    custom_id: Mapped[str | None] = mapped_column(sa.String(512))
    model: Mapped[str | None] = mapped_column(sa.String(200))
    queue: Mapped[str | None] = mapped_column(sa.String(200))
    body: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=5)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=3)
    # How many times the job was in flight when its worker was lost (lease expired). Once
    # is a stall, a lost database or bad luck; a job lost twice may be what kills workers,
    # and runs alone (promptq.queues.SUSPECT_AFTER_LOSSES).
    lost_count: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(sa.String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    content: Mapped[str | None] = mapped_column(sa.Text)
    finish_reason: Mapped[str | None] = mapped_column(sa.String(32))
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    ttft_ms: Mapped[float | None] = mapped_column(sa.Float)
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    error_status: Mapped[int | None] = mapped_column(sa.SmallInteger)
    # Why a running job waits instead of calling its provider (rate_limited,
    # circuit_open, ...); cleared when it goes on or ends.
    waiting_reason: Mapped[str | None] = mapped_column(sa.String(32))
    # The model that actually served the job (a fallback's name when one served it).
    served_by: Mapped[str | None] = mapped_column(sa.String(200))
    # A native job's deadline (POST /v1/jobs `deadline` / `timeout_seconds`): it is not
    # sent to its provider after this, and waiting for capacity ends here (`expired`,
    # `deadline_exceeded`). A batch line's is its batch's `expires_at`.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    webhook_url: Mapped[str | None] = mapped_column(sa.Text)
    # Cost control (promptq.budgets, promptq.cache): the key that submitted the job, the
    # budget it spends from, whether its answer came from the response cache and what
    # that saved, and the client's opt-out.
    api_key_id: Mapped[str | None] = mapped_column(sa.String(40))
    budget_id: Mapped[str | None] = mapped_column(sa.String(40))
    cached: Mapped[bool | None] = mapped_column(sa.Boolean)
    saved_usd: Mapped[Decimal | None] = mapped_column(Money)
    cache_opt_out: Mapped[bool | None] = mapped_column(sa.Boolean)

    __table_args__ = (
        sa.Index("ix_jobs_api_key_id_finished_at", "api_key_id", "finished_at"),
        sa.Index("ix_jobs_batch_id_status", "batch_id", "status"),
        sa.Index("ix_jobs_batch_id_line_no", "batch_id", "line_no"),
        sa.Index("ix_jobs_tenant_created_at", "tenant", "created_at"),
        # Retention finds finished native jobs by age (batch lines go with their batch).
        sa.Index(
            "ix_jobs_native_finished_at",
            "finished_at",
            postgresql_where=sa.text("batch_id IS NULL"),
            sqlite_where=sa.text("batch_id IS NULL"),
        ),
        # The sweeper finds running jobs whose lease expired, among the jobs in flight only.
        sa.Index(
            "ix_jobs_running_lease_expires_at",
            "lease_expires_at",
            postgresql_where=sa.text(_RUNNING),
            sqlite_where=sa.text(_RUNNING),
        ),
        # The sweeper's delivery pass finds queued jobs never sent, and sent ones whose
        # message is old, without reading the queued lines of a big batch.
        sa.Index(
            "ix_jobs_unsent",
            "priority",
            "created_at",
            "line_no",
            postgresql_where=sa.text(_QUEUED_UNSENT),
            sqlite_where=sa.text(_QUEUED_UNSENT),
        ),
        sa.Index(
            "ix_jobs_queued_enqueued_at",
            "enqueued_at",
            postgresql_where=sa.text(_QUEUED_SENT),
            sqlite_where=sa.text(_QUEUED_SENT),
        ),
        # The sweeper finds queued native jobs past their deadline (a few rows, however
        # many batch lines are queued).
        sa.Index(
            "ix_jobs_queued_deadline_at",
            "deadline_at",
            postgresql_where=sa.text(_QUEUED_WITH_DEADLINE),
            sqlite_where=sa.text(_QUEUED_WITH_DEADLINE),
        ),
    )


class UsageRecord(Base):
    """The ledger: one row per job attempt that a backend completed, never two. It is the
    bill, so it outlives the job rows that retention purges (job_id is not a foreign key)."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(sa.String(40))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    tenant: Mapped[str] = mapped_column(sa.String(200))
    batch_id: Mapped[str | None] = mapped_column(sa.String(40), index=True)
    model: Mapped[str] = mapped_column(sa.String(200))
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int] = mapped_column(sa.Integer)
    cost_usd: Mapped[Decimal] = mapped_column(Money)
    # A cache hit is billed 0; what the upstream call would have cost is kept here.
    cached: Mapped[bool | None] = mapped_column(sa.Boolean)
    saved_usd: Mapped[Decimal | None] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("job_id", "attempt", name="uq_usage_records_job_attempt"),
    )


class WebhookStatus(StrEnum):
    """Delivery state of one outbox event."""

    #: Waiting for (another) delivery attempt.
    PENDING = "pending"
    #: The receiver answered 2xx.
    DELIVERED = "delivered"
    #: Gave up after the maximum attempts, or the URL was refused.
    FAILED = "failed"


class WebhookEvent(Base):
    """The outbox: an event written in the same transaction as the state change it reports."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # the webhook-id
    tenant: Mapped[str] = mapped_column(sa.String(200))
    event_type: Mapped[str] = mapped_column(sa.String(64))
    url: Mapped[str] = mapped_column(sa.Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[WebhookStatus] = mapped_column(_enum(WebhookStatus, "webhook_status"))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("ix_webhook_events_status_next", "status", "next_attempt_at"),)


class IdempotencyKey(Base):
    """A remembered response for an Idempotency-Key, per tenant and endpoint."""

    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    endpoint: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    status_code: Mapped[int | None] = mapped_column(sa.SmallInteger)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
