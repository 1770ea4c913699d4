"""Human summaries of batches and jobs for the CLI: counts, failures by code, tokens, cost,
and times in ISO 8601 (UTC)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

__all__ = ["batch_summary", "failure_codes", "job_summary", "line_error_code"]

_BATCH_TIMES = (
    ("created", "created_at"),
    ("started", "in_progress_at"),
    ("finalizing", "finalizing_at"),
    ("completed", "completed_at"),
    ("failed", "failed_at"),
    ("cancelling", "cancelling_at"),
    ("cancelled", "cancelled_at"),
    ("expired", "expired_at"),
    ("expires", "expires_at"),
)
_JOB_TIMES = (("created", "created_at"), ("started", "started_at"), ("finished", "finished_at"))


def iso(epoch: float | None) -> str:
    """An epoch timestamp as ISO 8601 in UTC, e.g. 2026-11-22T03:45:06Z."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def line_error_code(line: dict[str, Any]) -> str:
    """The error code of one line of a batch error file (either of OpenAI's two shapes)."""
    error = line.get("error") or ((line.get("response") or {}).get("body") or {}).get("error")
    return str((error or {}).get("code") or "unknown")


def failure_codes(batch: dict[str, Any], error_lines: Iterable[bytes]) -> Counter[str]:
    """Failed lines by error code: the batch's error file, else its validation errors."""
    codes: Counter[str] = Counter()
    for raw in error_lines:
        if raw.strip():
            codes[line_error_code(json.loads(raw))] += 1
    if not codes:
        for error in (batch.get("errors") or {}).get("data") or []:
            codes[str(error.get("code") or "unknown")] += 1
    return codes


def _codes(codes: Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in codes.most_common()) or "none"


def _times(obj: dict[str, Any], fields: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"  {label:<11}{iso(obj[key])}" for label, key in fields if obj.get(key)]


def _duration(start: float | None, end: float | None) -> str:
    if not start or not end:
        return ""
    seconds = int(end - start)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def batch_summary(batch: dict[str, Any], codes: Counter[str] | None = None) -> str:
    """A batch object as a few readable lines."""
    counts, usage = batch["request_counts"], batch.get("usage") or {}
    end = batch.get("completed_at") or batch.get("cancelled_at") or batch.get("expired_at")
    took = _duration(batch.get("in_progress_at") or batch.get("created_at"), end)
    lines = [
        f"{batch['id']}  {batch['status']}  priority {batch.get('priority', '-')}",
        f"  requests   {counts['total']} total: {counts['completed']} succeeded, "
        f"{counts['failed']} failed, {counts.get('cancelled', 0)} cancelled, "
        f"{counts.get('expired', 0)} expired",
    ]
    if codes is not None:
        lines.append(f"  failures   {_codes(codes)}")
        if counts["failed"] and not codes and not batch.get("error_file_id"):
            lines[-1] = f"  failures   {counts['failed']} (codes: in the error file, once written)"
    lines += [
        f"  tokens     {usage.get('input_tokens', 0)} prompt + "
        f"{usage.get('output_tokens', 0)} completion",
        f"  cost       ${float(batch.get('cost_usd') or 0):.6f}",
        *_times(batch, _BATCH_TIMES),
    ]
    if took:
        lines.append(f"  took       {took}")
    files = [
        f"{name} {batch[key]}"
        for name, key in (("output", "output_file_id"), ("errors", "error_file_id"))
        if batch.get(key)
    ]
    if files:
        lines.append(f"  files      {', '.join(files)}")
    return "\n".join(lines)


def job_summary(job: dict[str, Any]) -> str:
    """A job object as a few readable lines."""
    usage = job.get("usage") or {}
    lines = [
        f"{job['id']}  {job['status']}  model {job.get('model') or '-'}  "
        f"priority {job.get('priority', '-')}",
    ]
    if job.get("batch_id"):
        lines.append(f"  batch      {job['batch_id']} (custom_id {job.get('custom_id')})")
    lines += [
        f"  attempts   {job.get('attempts', 0)} of {job.get('max_attempts', '-')}",
        f"  tokens     {usage.get('prompt_tokens', 0)} prompt + "
        f"{usage.get('completion_tokens', 0)} completion",
        f"  cost       ${float(job.get('cost_usd') or 0):.6f}",
        *_times(job, _JOB_TIMES),
    ]
    if job.get("error"):
        lines.append(f"  error      {job['error']['code']}: {job['error']['message']}")
    content = (job.get("result") or {}).get("content")
    if content:
        text = " ".join(str(content).split())
        lines.append(f"  result     {text[:200]}{'…' if len(text) > 200 else ''}")
    return "\n".join(lines)
