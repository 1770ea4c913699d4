"""DELETE /v1/files/{id} and `promptq gc` against the running deployment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import sqlalchemy as sa

from promptq.db import create_sync_engine
from tests.acceptance.helpers import chat_line, upload_and_run, wait_batch, write_jsonl
from tests.conftest import make_key


def _upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as fh:
        response = client.post(
            "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "batch"}
        )
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


def test_deleting_files(
    client: httpx.Client, pipeline: str, pg_url: str, api_url: str, tmp_path: Path
) -> None:
    # Given a batch whose one line the provider answers slowly, and an unused upload
    slow = write_jsonl(tmp_path / "slow.jsonl", [chat_line("s", "hi [[sim:sleep=4]]")])
    batch = upload_and_run(client, slow)
    unused = _upload(client, write_jsonl(tmp_path / "u.jsonl", [chat_line("u", "hi")]))
    other = httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {make_key(pg_url, 'other')}"}
    )
    # When the running batch's input, the unused upload (by its owner and by another
    # tenant), and then the finished batch's output file are deleted
    in_use = client.delete(f"/v1/files/{batch['input_file_id']}")
    stranger = other.delete(f"/v1/files/{unused}")
    deleted = client.delete(f"/v1/files/{unused}")
    done = wait_batch(client, batch["id"])
    output = client.delete(f"/v1/files/{done['output_file_id']}")
    # Then the input of a running batch is refused and a stranger sees no such file
    assert in_use.status_code == 409, in_use.text
    assert stranger.status_code == 404
    # And the owner's deletes answer like OpenAI's, and the files are gone
    assert deleted.json() == {"id": unused, "object": "file", "deleted": True}
    assert output.status_code == 200, output.text
    assert client.get(f"/v1/files/{unused}").status_code == 404
    assert client.get(f"/v1/files/{unused}/content").status_code == 404
    assert client.get(f"/v1/files/{done['output_file_id']}").status_code == 404
    # And the batch and its result are still there
    assert client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] == 1


def test_gc_purges_an_old_batch_and_keeps_its_bill(
    client: httpx.Client, pipeline: str, env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    # Given a finished batch made to look 31 days old, and a fresh one
    lines = [chat_line(f"g-{i}", f"gc line {i}") for i in range(5)]
    old = upload_and_run(client, write_jsonl(tmp_path / "old.jsonl", lines))
    fresh = upload_and_run(client, write_jsonl(tmp_path / "fresh.jsonl", lines))
    for batch in (old, fresh):
        assert wait_batch(client, batch["id"])["status"] == "completed"
    engine = create_sync_engine(pg_url)
    ledger = sa.text("SELECT count(*), sum(cost_usd) FROM usage_records WHERE batch_id = :b")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE batches SET completed_at = now() - interval '31 days' WHERE id = :b"),
            {"b": old["id"]},
        )
        bill = conn.execute(ledger, {"b": old["id"]}).one()
    # When `promptq gc` runs with the default retention
    done = subprocess.run(
        [sys.executable, "-m", "promptq", "gc"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    # Then the old batch and its jobs are gone, the fresh one stays, the bill is kept
    assert done.returncode == 0, done.stderr
    assert "batches: 1 purged" in done.stdout and "jobs: 5 purged" in done.stdout, done.stdout
    assert client.get(f"/v1/batches/{old['id']}").status_code == 404
    assert client.get(f"/v1/batches/{fresh['id']}").json()["status"] == "completed"
    with engine.connect() as conn:
        assert conn.execute(ledger, {"b": old["id"]}).one() == bill
        jobs = conn.execute(
            sa.text("SELECT count(*) FROM jobs WHERE batch_id = :b"), {"b": old["id"]}
        ).scalar()
    engine.dispose()
    assert (jobs, bill[0]) == (0, 5)
