"""Every Redis key prefix, queue name and task name, named once."""

from __future__ import annotations

__all__ = [
    "BREAKER_PREFIX",
    "BROKER_EPOCH_KEY",
    "BROKER_PRIORITY_SEP",
    "BROKER_UNACKED_KEY",
    "CACHE_LOCK_PREFIX",
    "CACHE_PREFIX",
    "GPU_INTERACTIVE_QUEUE_PREFIX",
    "GPU_QUEUE_PREFIX",
    "PRIORITY_STEPS",
    "RATE_LIMIT_PREFIX",
    "RATE_SLOTS_PREFIX",
    "RATE_WAIT_PREFIX",
    "RATE_WAIT_SEEN_PREFIX",
    "REMOTE_INTERACTIVE_QUEUE",
    "REMOTE_QUEUE",
    "SEMANTIC_PREFIX",
    "TASK_RUN_CHUNK",
    "TENANT_SLOTS_PREFIX",
    "WORKER_BEAT_PREFIX",
    "broker_list",
    "gpu_queue",
    "tenant_slots_key",
    "worker_beat_key",
]

#: Queue of the remote workers (OpenAI-compatible and Anthropic providers).
REMOTE_QUEUE = "promptq.remote"
#: Interactive chunks for remote workers: a consumer of its own in each remote worker takes
#: them, so they never wait behind Celery threads blocked admitting bulk chunks.
REMOTE_INTERACTIVE_QUEUE = "promptq.remote.interactive"
#: GPU queues are per model: a GPU worker loads one engine for one model.
GPU_QUEUE_PREFIX = "promptq.gpu."
#: Interactive chunks for a model's GPU workers, taken by a consumer of their own (a prefix
#: apart, so that no model name makes one queue name both a GPU and an interactive queue).
GPU_INTERACTIVE_QUEUE_PREFIX = "promptq.gpu-interactive."
#: The Celery task that runs a micro-batch (a chunk of job ids).
TASK_RUN_CHUNK = "promptq.run_chunk"
#: Redis priority levels per queue; 0 is served first.
PRIORITY_STEPS = 10
#: Set by the scheduler in the broker's Redis; its absence means Redis lost its data.
BROKER_EPOCH_KEY = "promptq:broker-epoch"
#: A live worker's last heartbeat (JSON, with a time to live): promptq:worker:<kind>:<owner>.
WORKER_BEAT_PREFIX = "promptq:worker:"
#: Kombu's Redis transport keeps priority step N > 0 of a queue in the list
#: `<queue><sep><N>` and step 0 in `<queue>`; metrics, Flower and KEDA read them.
BROKER_PRIORITY_SEP = "\x06\x16"
#: Kombu's hash of messages fetched by a worker and not yet acked.
BROKER_UNACKED_KEY = "unacked"
#: Exact response cache entries (promptq.cache), by hashed key.
CACHE_PREFIX = "promptq:cache:"
#: Single-flight locks of the response cache: held by the request fetching the answer.
CACHE_LOCK_PREFIX = "promptq:cache-lock:"
#: Semantic cache: per tenant, model and parameters, the embeddings of cached prompts.
SEMANTIC_PREFIX = "promptq:semcache:"
#: Per-deployment rate-limit state (a hash: buckets, pause, discovered limits).
RATE_LIMIT_PREFIX = "promptq:rl:"
#: Per-deployment requests in flight (a sorted set of slot ids scored by their expiry).
RATE_SLOTS_PREFIX = "promptq:rl-slots:"
#: Per-deployment waiting room: each process's lane scored by its first waiter's (band,
#: priority, arrival), and (`..-seen:`) when each lane lapses if not heard from again.
RATE_WAIT_PREFIX = "promptq:rl-wait:"
RATE_WAIT_SEEN_PREFIX = "promptq:rl-wait-seen:"
#: Per-deployment circuit breaker state (a hash).
BREAKER_PREFIX = "promptq:cb:"


def gpu_queue(model: str) -> str:
    """The queue a GPU worker for `model` consumes."""
    return f"{GPU_QUEUE_PREFIX}{model}"


def gpu_interactive_queue(model: str) -> str:
    """The interactive queue a GPU worker for `model` consumes on a thread of its own."""
    return f"{GPU_INTERACTIVE_QUEUE_PREFIX}{model}"


def worker_beat_key(kind: str, owner: str) -> str:
    """The Redis key of one worker's heartbeat record."""
    return f"{WORKER_BEAT_PREFIX}{kind}:{owner}"


def broker_list(queue: str, step: int) -> str:
    """The Redis list that holds `queue`'s messages at priority `step`."""
    return f"{queue}{BROKER_PRIORITY_SEP}{step}" if step else queue


#: Per tenant and kind of heavy request: the requests in progress (promptq.api.limits).
TENANT_SLOTS_PREFIX = "promptq:slots:"


def tenant_slots_key(kind: str, tenant: str) -> str:
    """The sorted set counting one tenant's heavy requests of one kind."""
    return f"{TENANT_SLOTS_PREFIX}{kind}:{tenant}"
