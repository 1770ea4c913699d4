"""The progress bar of `promptq submit --wait` and the demo: done/total, failures, rate,
ETA and cost, on one line that fits 80 columns."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Column
from rich.text import Text

from promptq.client import Client

__all__ = ["follow", "progress_bar", "show_batch"]


class _RateColumn(ProgressColumn):
    """Requests finished per second, over rich's recent window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{_compact(speed)}/s" if speed else "-/s", style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    """Time left at the current rate; the elapsed time once finished."""

    def render(self, task: Task) -> Text:
        if task.finished:
            took = _clock(task.finished_time or task.elapsed)
            return Text(f"in {took}", style="progress.elapsed")
        left = task.time_remaining
        eta = _clock(left) if left is not None else "-:--:--"
        return Text(f"eta {eta}", style="progress.remaining")


def _compact(value: float) -> str:
    """12.3, 12.3k, 12.3M: a rate in at most 6 characters up to 999.9M."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.1f}"


def _clock(seconds: float | None) -> str:
    total = int(seconds or 0)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def progress_bar(console: Console | None = None) -> Progress:
    """A bar whose fixed columns take about 50 characters; the bar itself takes the rest of
    the line, so it fits any terminal from 80 columns up."""
    return Progress(
        TextColumn("{task.description}", style="bold", table_column=_fixed()),
        BarColumn(bar_width=None),
        TextColumn("{task.completed:.0f}/{task.total:.0f}", table_column=_fixed()),
        TextColumn("{task.fields[failed]}", style="red", table_column=_fixed()),
        _RateColumn(table_column=_fixed()),
        _EtaColumn(table_column=_fixed()),
        TextColumn("{task.fields[cost]}", table_column=_fixed()),
        console=console or Console(stderr=True),  # stdout stays data
        expand=True,
    )


def _fixed() -> Column:
    """A column that keeps its text on one line; the bar gives up the room."""
    return Column(no_wrap=True)


def show_batch(bar: Progress, task_id: Any, batch: dict[str, Any]) -> None:
    """Move the bar to a batch object's counts, status and cost."""
    counts = batch["request_counts"]
    done = sum(counts.get(k, 0) for k in ("completed", "failed", "cancelled", "expired"))
    failed = counts.get("failed", 0)
    bar.update(
        task_id,
        total=max(counts["total"], 1),
        completed=done,
        description=batch["status"],
        failed=f"✗{failed}" if failed else "",
        cost=f"${float(batch.get('cost_usd') or 0):.4f}",
    )


def follow(client: Client, batch: dict[str, Any], console: Console | None = None) -> dict[str, Any]:
    """Poll a batch to its end behind a progress bar; returns the final batch object."""
    err = console or Console(stderr=True)
    if batch["status"] == "validating":  # its lines are being checked; the count grows
        err.print(f"{batch['id']}: validating its lines")
    else:
        err.print(f"{batch['id']}: {batch['request_counts']['total']} requests")
    with progress_bar(err) as bar:
        total = max(batch["request_counts"]["total"], 1)
        task_id = bar.add_task(batch["status"], total=total, failed="", cost="$0.0000")
        final = client.wait(batch["id"], lambda current: show_batch(bar, task_id, current))
        show_batch(bar, task_id, final)
    return final
