"""Batches in the domain, against Postgres and SQLite: lines become jobs (invalid ones
fail at once), a batch is finalized only once no line is open, cancel ends its queued
lines, and a page of batches is summarised in one query with the same counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptq.batches import cancel_batch, finalize_batch
from promptq.catalog import Catalog
from promptq.db import Database
from promptq.jobs import claim, record_failure, record_success
from promptq.models import Batch, BatchStatus
from promptq.scheduler.validation import Validation, validate_batch
from promptq.views import summarize, summarize_many
from tests.factories import OUTCOME, batch_line, get_job, one_model_catalog, validating_batch

pytestmark = pytest.mark.anyio


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return one_model_catalog(tmp_path, 1, 2)


async def _batch(db: Database, catalog: Catalog, *lines: bytes) -> Batch:
    batch_id = await validating_batch(db, *lines)
    assert await validate_batch(_validation(db, catalog), batch_id)
    return await _reload(db, batch_id)


def _validation(db: Database, catalog: Catalog) -> Validation:
    return Validation(db, catalog, None, 32, 3, 100)


async def _reload(db: Database, batch_id: str) -> Batch:
    async with db.session() as session:
        batch = await session.get(Batch, batch_id)
        assert batch is not None
        return batch


def _job_id(batch: Batch, line_no: int) -> str:
    return f"job_{batch.id.removeprefix('batch_')}_{line_no}"


async def test_a_batch_is_finalized_only_once_no_line_is_open(
    any_db: Database, catalog: Catalog
) -> None:
    # Given a batch of two valid lines and one naming an unknown model
    batch = await _batch(
        any_db, catalog, batch_line("a"), batch_line("b"), batch_line("c", model="nope")
    )
    assert batch.status == BatchStatus.IN_PROGRESS
    refused = await get_job(any_db, _job_id(batch, 3))
    assert (refused.error_code, refused.error_message) == (
        "model_not_found",
        "The model 'nope' does not exist.",
    )
    # When it is finalized while its lines are queued, then after they finished
    async with any_db.session() as session:
        early = await finalize_batch(session, batch.id)
        a, b = await claim(session, [_job_id(batch, 1), _job_id(batch, 2)], "w1", 60)
        assert await record_success(session, a, OUTCOME)
        assert await record_failure(session, b, "provider_error", "no", 400)
        on_time = await finalize_batch(session, batch.id)
        final = await session.get(Batch, batch.id, populate_existing=True)
        summary = await summarize(session, batch.id)
    # Then only the second finalized it, with its counts derived from the lines
    assert (early, on_time) == (False, True)
    assert final is not None and final.status == BatchStatus.COMPLETED
    assert summary.request_counts() == {
        "total": 3,
        "completed": 1,
        "failed": 2,
        "cancelled": 0,
        "expired": 0,
    }


async def test_cancel_ends_queued_lines_and_a_page_is_summarised_in_one_query(
    any_db: Database, catalog: Catalog
) -> None:
    # Given two batches, one of them cancelled before any line ran
    kept = await _batch(any_db, catalog, batch_line("a"))
    dropped = await _batch(any_db, catalog, batch_line("x"), batch_line("y"))
    async with any_db.session() as session:
        loaded = await session.get(Batch, dropped.id)
        assert loaded is not None
        dropped = await cancel_batch(session, loaded)
    line = await get_job(any_db, _job_id(dropped, 1))
    assert (dropped.status, line.error_code) == (BatchStatus.CANCELLED, "batch_cancelled")
    # When the page is summarised at once (and a batch id with no lines is asked too)
    async with any_db.session() as session:
        page = await summarize_many(session, [kept.id, dropped.id, "batch_none"])
        one_by_one = {i: await summarize(session, i) for i in (kept.id, dropped.id)}
    # Then each batch has the counts it has on its own
    assert {i: s.request_counts() for i, s in page.items() if i != "batch_none"} == {
        i: s.request_counts() for i, s in one_by_one.items()
    }
    assert page[dropped.id].request_counts()["cancelled"] == 2
    assert page["batch_none"].total == 0
