"""The one way tests make job rows: through the `submit` transition, as POST /v1/jobs
stores a job (queued, marked enqueued), optionally claimed by a worker; and the one way
they make a batch: an uploaded file of chat lines and a batch row that is `validating`,
as POST /v1/batches leaves it."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from promptq.batches import create_batch
from promptq.catalog import Catalog, load_catalog
from promptq.db import Database
from promptq.files import store_upload
from promptq.ids import new_id
from promptq.jobs import ClaimedJob, JobOutcome, claim, submit
from promptq.models import Batch, Job, utcnow

__all__ = [
    "OUTCOME",
    "add_jobs",
    "batch_line",
    "claimed_jobs",
    "get_job",
    "one_model_catalog",
    "outcome",
    "validating_batch",
]


def outcome(content: str = "hi") -> JobOutcome:
    """A finished attempt's result."""
    return JobOutcome(
        content=content,
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=2,
        cost_usd=Decimal("0.0000015"),
        response={"object": "chat.completion", "content": content},
    )


OUTCOME = outcome()


async def add_jobs(
    db: Database,
    *job_ids: str,
    model: str = "m",
    queue: str = "q",
    max_attempts: int = 3,
    webhook_url: str | None = None,
    priority: int = 5,
    body: dict[str, Any] | None = None,
) -> None:
    """Store queued native jobs (tenant 't')."""
    async with db.session() as session:
        for job_id in job_ids:
            job = Job(
                id=job_id,
                tenant="t",
                model=model,
                queue=queue,
                body=body if body is not None else {"messages": []},
                priority=priority,
                max_attempts=max_attempts,
                webhook_url=webhook_url,
                created_at=utcnow(),
            )
            submit(session, job)
        await session.commit()


async def claimed_jobs(
    db: Database, job_ids: list[str], owner: str = "w1", webhook_url: str | None = None
) -> dict[str, ClaimedJob]:
    """Store queued jobs and claim them for `owner`; by id."""
    await add_jobs(db, *job_ids, webhook_url=webhook_url)
    async with db.session() as session:
        return {job.id: job for job in await claim(session, job_ids, owner, 60)}


async def get_job(db: Database, job_id: str = "job_1") -> Job:
    """The job row as stored now."""
    async with db.session() as session:
        job = await session.get(Job, job_id)
        assert job is not None, job_id
        return job


def one_model_catalog(tmp_path: Path, input_per_mtok: float, output_per_mtok: float) -> Catalog:
    """A models file with one OpenAI-compatible model "m" whose server is never called."""
    path = tmp_path / "models.toml"
    path.write_text(
        '[[models]]\nname = "m"\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        f"input_per_mtok = {input_per_mtok}\noutput_per_mtok = {output_per_mtok}\n"
    )
    return load_catalog(path)


def batch_line(custom_id: str, model: str = "m") -> bytes:
    """One line of a batch input file: a chat request whose prompt is its custom_id."""
    body = {"model": model, "messages": [{"role": "user", "content": custom_id}]}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return (json.dumps(line) + "\n").encode()


async def validating_batch(db: Database, *lines: bytes, **extra: Any) -> str:
    """Upload `lines` as tenant 't' and store a 24-hour batch over them, `validating`."""
    async with db.session() as session:
        file = await store_upload(session, "t", "in.jsonl", io.BytesIO(b"".join(lines)), 100)
        now = utcnow()
        batch = Batch(
            id=new_id("batch_"),
            tenant="t",
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            priority=5,
            created_at=now,
            expires_at=now + timedelta(hours=24),
            **extra,
        )
        return (await create_batch(session, batch)).id
