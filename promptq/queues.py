"""Which queue a job goes to, and at which Redis priority step (a domain rule: the API,
batches and the dispatcher all ask it)."""

from __future__ import annotations

from promptq.catalog import Backend, ModelEntry
from promptq.constants import (
    GPU_QUEUE_PREFIX,
    PRIORITY_STEPS,
    REMOTE_INTERACTIVE_QUEUE,
    REMOTE_QUEUE,
    gpu_interactive_queue,
    gpu_queue,
)

__all__ = [
    "BULK_BAND",
    "INTERACTIVE_BAND",
    "SUSPECT_AFTER_LOSSES",
    "delivery_queue",
    "queue_for",
    "queue_step",
    "runs_alone",
]

#: Steps 0-4 carry interactive jobs, 5-9 batch lines: interactive work never
#: waits behind a bulk backlog, and each band keeps the client's own order.
INTERACTIVE_BAND = 0
BULK_BAND = PRIORITY_STEPS // 2

#: A job in flight at this many worker losses may be what kills its workers: it runs in
#: a message of its own, with nothing else in flight, so another crash costs only itself.
#: Fewer losses are a stall (SIGSTOP, a long GC, a lost database or broker) or another
#: job's crash: those jobs run again in ordinary chunks, and recovery stays parallel.
SUSPECT_AFTER_LOSSES = 2


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


def runs_alone(lost_count: int) -> bool:
    """Whether a queued job is sent (and run) alone: it was in flight at a worker loss
    at least SUSPECT_AFTER_LOSSES times."""
    return lost_count >= SUSPECT_AFTER_LOSSES


def delivery_queue(queue: str, step: int) -> str:
    """The queue a chunk is sent to: interactive chunks go to the workers' own interactive
    consumer (the remote workers', or the GPU workers' of that model)."""
    if step >= BULK_BAND:
        return queue
    if queue == REMOTE_QUEUE:
        return REMOTE_INTERACTIVE_QUEUE
    if queue.startswith(GPU_QUEUE_PREFIX):
        return gpu_interactive_queue(queue.removeprefix(GPU_QUEUE_PREFIX))
    return queue
