"""What the CLI shows: the progress bar fits 80 columns; summaries use ISO 8601 times and
count failures by code."""

from __future__ import annotations

import io
import json

from rich.console import Console

from promptq.progress import progress_bar, show_batch
from promptq.summary import batch_summary, failure_codes, job_summary

BATCH = {
    "id": "batch_34f2e013ec2f5fdb0235b622",
    "status": "in_progress",
    "priority": 7,
    "request_counts": {
        "total": 1_000_000,
        "completed": 412_345,
        "failed": 12_345,
        "cancelled": 0,
        "expired": 0,
    },
    "usage": {"input_tokens": 123_456_789, "output_tokens": 98_765_432},
    "cost_usd": 12345.678901,
    "created_at": 1_795_000_000,
    "in_progress_at": 1_795_000_001,
    "completed_at": None,
    "error_file_id": None,
    "errors": None,
}


def test_the_progress_bar_fits_80_columns_with_rate_eta_and_cost() -> None:
    # Given a million-line batch part done, on an 80-column terminal
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    bar = progress_bar(console)
    task = bar.add_task("validating", total=1, failed="", cost="")
    # When the bar shows two polls of it
    show_batch(bar, task, {**BATCH, "request_counts": {**BATCH["request_counts"], "failed": 0}})
    show_batch(bar, task, BATCH)
    console.print(bar.get_renderable())
    # Then one line holds the counts, failures, a rate, an ETA and the cost, within 80 columns
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) <= 80, lines
    line = lines[0]
    for part in ("in_progress", "424690/1000000", "✗12345", "/s", "eta ", "$12345.6789"):
        assert part in line, (part, line)


def test_a_batch_summary_counts_failures_by_code_and_shows_iso_times() -> None:
    error_file = [
        json.dumps({"custom_id": "a", "response": None, "error": {"code": "invalid_json"}}),
        json.dumps(
            {
                "custom_id": "b",
                "response": {"status_code": 429, "body": {"error": {"code": "rate_limited"}}},
                "error": None,
            }
        ),
        json.dumps({"custom_id": "c", "response": None, "error": {"code": "invalid_json"}}),
    ]
    codes = failure_codes(BATCH, (line.encode() for line in error_file))
    text = batch_summary(BATCH, codes)
    assert "failures   invalid_json 2, rate_limited 1" in text
    assert "1000000 total: 412345 succeeded, 12345 failed" in text
    assert "123456789 prompt + 98765432 completion" in text
    assert "cost       $12345.678901" in text
    assert "created    2026-11-18T" in text and "Z" in text
    assert "1795000000" not in text


def test_validation_errors_count_when_there_is_no_error_file() -> None:
    batch = {**BATCH, "errors": {"data": [{"code": "missing_custom_id", "line": 3}]}}
    assert failure_codes(batch, []) == {"missing_custom_id": 1}


def test_failures_of_a_running_batch_are_counted_before_their_codes_are_known() -> None:
    text = batch_summary(BATCH, failure_codes(BATCH, []))
    assert "failures   12345 (codes: in the error file, once written)" in text


def test_a_job_summary_shows_its_error() -> None:
    job = {
        "id": "job_1",
        "status": "failed",
        "model": "sim-gpt",
        "priority": 0,
        "attempts": 3,
        "max_attempts": 3,
        "usage": None,
        "cost_usd": None,
        "created_at": 1_795_000_000,
        "error": {"code": "provider_error", "message": "HTTP 500"},
        "result": None,
    }
    text = job_summary(job)
    assert text.startswith("job_1  failed  model sim-gpt")
    assert "attempts   3 of 3" in text and "error      provider_error: HTTP 500" in text
