"""The one settings object: every knob is a `PROMPTQ_*` environment variable."""

from __future__ import annotations

import base64
import binascii
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings", "sqlalchemy_url"]


def _default_home() -> Path:
    return Path.home() / ".promptq"


class Settings(BaseSettings):
    """promptq's settings; defaults run everything on one machine (see `promptq demo`)."""

    # Inputs stay out of error messages: they may hold a secret or a DSN with a password.
    model_config = SettingsConfigDict(
        env_prefix="PROMPTQ_", extra="ignore", hide_input_in_errors=True
    )

    environment: Literal["development", "production"] = "development"
    home: Path = Field(default_factory=_default_home)
    database_url: str = ""  # empty: a SQLite file under `home`
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The API's connection pool (as many again in overflow), and how long a request waits
    # for a free connection before it is answered 503 `database_busy`.
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    models_file: Path | None = None

    # Micro-batches: how many job ids one queue message names.
    chunk_size: int = Field(default=32, ge=1, le=1000)
    # Jobs: attempts, leases and the sweeper.
    max_attempts: int = Field(default=3, ge=1, le=100)
    lease_seconds: float = Field(default=300.0, gt=0)
    # How long Redis keeps a fetched, unacked message before handing it out again; longer
    # than any lease (0: twice the lease plus a minute).
    visibility_timeout_seconds: float = Field(default=0.0, ge=0)
    sweep_interval_seconds: float = Field(default=10.0, gt=0)
    requeue_after_seconds: float = Field(default=1800.0, gt=0)
    # Remote worker: provider calls.
    request_timeout_seconds: float = Field(default=120.0, gt=0)
    retry_base_seconds: float = Field(default=1.0, ge=0)
    retry_max_seconds: float = Field(default=60.0, ge=0)
    # Completion tokens reserved against a TPM limit or budget for a request that sets no
    # max_tokens/max_completion_tokens (settled with the real usage afterwards).
    default_completion_tokens: int = Field(default=1024, gt=0)
    # Provider traffic: shared limits are paced per second and hold this many seconds of
    # burst; they pace at `rate_limit_margin` of a declared limit; bulk work leaves
    # `bulk_reserve` of each bucket to interactive work.
    rate_limit_burst_seconds: float = Field(default=0.5, gt=0, le=60)
    rate_limit_margin: float = Field(default=0.98, gt=0, le=1)
    bulk_reserve: float = Field(default=0.2, ge=0, lt=1)
    # Provider faults (5xx, timeouts, resets) a job may meet before it falls back or fails,
    # retried with exponential backoff and jitter (retry_base_seconds .. retry_max_seconds).
    # Waiting on rate limits, 429s and open circuits never counts against it.
    fault_max_retries: int = Field(default=10, ge=0, le=1000)
    # Circuit breakers: consecutive faults that open one, and its first cooldown.
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=2.0, gt=0)
    breaker_cooldown_max_seconds: float = Field(default=15.0, gt=0)
    # Workers: a finished job waits up to this long for others to be stored with it in one
    # transaction, and a group holds at most this many jobs.
    result_flush_seconds: float = Field(default=0.005, ge=0, le=1)
    result_group_size: int = Field(default=100, ge=1, le=1000)
    # Uploads.
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_file_lines: int = Field(default=100_000, gt=0)
    # A longer line of a batch file fails alone (`line_too_long`), read in small pieces:
    # an upload's memory grows with this limit, never with the longest line.
    max_line_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    # Heavy requests one tenant may have in progress at once (across API processes): more
    # get 429, so one tenant's downloads or uploads cannot take the API from the others.
    tenant_max_downloads: int = Field(default=4, ge=1)
    tenant_max_uploads: int = Field(default=2, ge=1)
    # Webhooks: the Standard Webhooks signing secret (`whsec_<base64>`; in development a
    # default is kept under `home`), internal hosts they may reach, and the relay's retries.
    webhook_secret: SecretStr | None = None
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_retry_base_seconds: float = Field(default=30.0, ge=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, ge=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_poll_seconds: float = Field(default=0.5, gt=0)
    # Idempotency-Key: how long a key's first response is replayed.
    idempotency_ttl_seconds: float = Field(default=86400.0, gt=0)
    # Metrics: a bearer token /metrics requires on the API, workers and scheduler (none: open,
    # as Prometheus scrapes inside the cluster), and how long the API's cluster view is kept.
    metrics_token: SecretStr | None = None  # sent as Authorization: Bearer <token>
    metrics_port: int = Field(default=0, ge=0, le=65535)  # workers, scheduler; 0: none
    metrics_cache_seconds: float = Field(default=5.0, ge=0)  # the API's cluster view
    # Workers send a Celery task event per job (Flower lists each job as a task).
    job_task_events: bool = True  # one Celery task event per job step, for Flower
    # Retention (0 keeps forever), as OpenAI's: uploaded files until deleted, finished
    # batches (with their lines and result files) and finished native jobs for 30 days.
    # The usage ledger is never purged: it is the bill.
    file_retention_days: float = Field(default=0.0, ge=0)  # uploads; 0: until deleted
    result_retention_days: float = Field(default=30.0, ge=0)  # finished batches and jobs
    webhook_retention_days: float = Field(default=7.0, ge=0)  # delivered/given-up events
    retention_interval_seconds: float = Field(default=3600.0, ge=0)  # 0: the scheduler never purges
    retention_chunk_size: int = Field(default=1000, ge=1, le=100_000)  # rows per DELETE

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql", "postgres://", "sqlite")):
            raise ValueError("PROMPTQ_DATABASE_URL must be a postgresql:// or sqlite:// URL")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        try:
            key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            key = b""
        if not raw.startswith("whsec_") or not 24 <= len(key) <= 64:
            raise ValueError(
                "PROMPTQ_WEBHOOK_SECRET must be 'whsec_' followed by the base64 of 24-64 "
                "random bytes (Standard Webhooks)"
            )
        return value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_allowed_hosts(cls, value: object) -> object:
        # The environment gives a JSON list or a comma-separated string.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Self:
        if self.environment == "production" and self.webhook_secret is None:
            raise ValueError(
                "PROMPTQ_WEBHOOK_SECRET is required in production: set it to 'whsec_' + "
                "base64 of 32 random bytes, e.g. from `python -m promptq.webhooks`"
            )
        return self

    @property
    def visibility_timeout(self) -> float:
        """The broker's visibility timeout, never shorter than a lease."""
        if self.visibility_timeout_seconds:
            return max(self.visibility_timeout_seconds, self.lease_seconds + 1)
        return self.lease_seconds * 2 + 60

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in `home`."""
        return self.database_url or f"sqlite:///{self.home / 'promptq.db'}"


def sqlalchemy_url(url: str, *, asynchronous: bool) -> str:
    """Pick the driver for a plain URL: psycopg for Postgres, aiosqlite or pysqlite for SQLite."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    base = scheme.split("+", 1)[0]
    if base in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}" if asynchronous else f"sqlite://{rest}"
    raise ValueError(f"unsupported database URL scheme: {scheme!r}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
