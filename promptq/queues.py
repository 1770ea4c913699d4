"""Which queue a job goes to, and at which Redis priority step (a domain rule: the API,
batches and the dispatcher all ask it)."""

from __future__ import annotations

from promptq.catalog import Backend, ModelEntry
from promptq.constants import PRIORITY_STEPS, REMOTE_QUEUE, gpu_queue

__all__ = ["BULK_BAND", "INTERACTIVE_BAND", "queue_for", "queue_step"]

#: Steps 0-4 carry interactive jobs, 5-9 batch lines: interactive work never
#: waits behind a bulk backlog, and each band keeps the client's own order.
INTERACTIVE_BAND = 0
BULK_BAND = PRIORITY_STEPS // 2


def queue_for(entry: ModelEntry) -> str:
    """The Celery queue of the worker kind that runs this model."""
    if entry.backend is Backend.VLLM:
        return gpu_queue(entry.name)
    return REMOTE_QUEUE


def queue_step(priority: int, *, interactive: bool) -> int:
    """Map a client priority (0 most urgent .. 9) into its band's Redis step."""
    priority = min(max(priority, 0), 9)
    band = INTERACTIVE_BAND if interactive else BULK_BAND
    return band + priority * (PRIORITY_STEPS // 2) // 10
