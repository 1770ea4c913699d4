"""POST /v1/batches/{id}/retry makes one batch however many times it is sent at once: with
an Idempotency-Key every repeat gets the first answer; without one, a retry while another
is open is 409 naming it. The re-run lines are billed once."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from promptq.db import create_sync_engine
from tests.acceptance.helpers import chat_line, upload_and_run, wait_batch, write_jsonl

LINES = 12


def _failed_batch(client: httpx.Client, tmp_path: Path, name: str) -> dict[str, Any]:
    """A started batch whose 12 lines are refused once (a terminal 400, so they end failed;
    provider faults would wait behind the circuit breaker instead) and then succeed; every
    call takes 2 s, so a retry stays open long enough to be raced."""
    token = secrets.token_hex(4)
    lines = [
        chat_line(f"{name}-{i}", f"{token} {i} [[sim:fail=400x1]] [[sim:sleep=2]]")
        for i in range(LINES)
    ]
    return upload_and_run(client, write_jsonl(tmp_path / f"{name}.jsonl", lines))


def _post_retries(
    client: httpx.Client, batch_id: str, headers: dict[str, str]
) -> list[httpx.Response]:
    def post(_: int) -> httpx.Response:
        return client.post(f"/v1/batches/{batch_id}/retry", headers=headers)

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(post, range(10)))


def _usage_rows(pg_url: str, source_id: str) -> tuple[int, int]:
    """(retry batches of the source, ledger rows of their jobs)."""
    engine = create_sync_engine(pg_url)
    with engine.connect() as conn:
        batches = conn.execute(
            sa.text("SELECT count(*) FROM batches WHERE retry_of = :s"), {"s": source_id}
        ).scalar_one()
        billed = conn.execute(
            sa.text(
                "SELECT count(*) FROM usage_records WHERE batch_id IN "
                "(SELECT id FROM batches WHERE retry_of = :s)"
            ),
            {"s": source_id},
        ).scalar_one()
    engine.dispose()
    return int(batches), int(billed)


def test_ten_concurrent_retries_make_one_batch_and_bill_once(
    client: httpx.Client, pipeline: str, pg_url: str, tmp_path: Path
) -> None:
    # Given two finished batches whose 12 lines all failed
    plain, keyed = (
        _failed_batch(client, tmp_path, "plain"),
        _failed_batch(client, tmp_path, "keyed"),
    )
    for batch in (plain, keyed):
        assert wait_batch(client, batch["id"])["request_counts"]["failed"] == LINES
    # When each is retried 10 times at once: without a key, and with one key
    unkeyed = _post_retries(client, plain["id"], {})
    same_key = _post_retries(client, keyed["id"], {"Idempotency-Key": f"retry-{keyed['id']}"})
    # Then without a key one retry is made, and the nine others name it in a 409
    made = [r for r in unkeyed if r.status_code == 200]
    assert len(made) == 1, [r.text for r in unkeyed]
    retry_id = made[0].json()["id"]
    refused = [r for r in unkeyed if r.status_code != 200]
    assert {r.status_code for r in refused} == {409}
    assert {r.json()["error"]["code"] for r in refused} == {"retry_in_progress"}
    assert all(retry_id in r.json()["error"]["message"] for r in refused)
    assert {r.headers["location"] for r in refused} == {f"/v1/batches/{retry_id}"}
    # And with a key all ten got the same first answer
    assert {r.status_code for r in same_key} == {200}, [r.text for r in same_key]
    assert len({r.json()["id"] for r in same_key}) == 1
    # And each retry ran its 12 lines once: one batch per source, 12 ledger rows
    for source, retry in ((plain, retry_id), (keyed, same_key[0].json()["id"])):
        done = wait_batch(client, retry)
        assert done["request_counts"]["completed"] == LINES
        assert _usage_rows(pg_url, source["id"]) == (1, LINES)
