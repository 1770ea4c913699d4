"""Start a remote or GPU worker process: runtime first, then Celery's consumer."""

from __future__ import annotations

from functools import partial

import aiohttp

from promptq.catalog import Backend as BackendKind
from promptq.catalog import Catalog, ModelEntry, load_catalog
from promptq.config import Settings
from promptq.constants import REMOTE_QUEUE, gpu_queue
from promptq.errors import ConfigError
from promptq.workers.celery_app import make_celery
from promptq.workers.completion import Backend
from promptq.workers.gpu_worker import gpu_in_flight, make_gpu_backend
from promptq.workers.remote_worker import make_http_session, make_remote_backend
from promptq.workers.runtime import WorkerRuntime
from promptq.workers.tasks import run_worker

__all__ = ["run_gpu_worker", "run_remote_worker"]


def run_remote_worker(settings: Settings, *, concurrency: int, loglevel: str) -> None:
    """Serve every openai/anthropic model of the models file, `concurrency` requests at once."""
    catalog = load_catalog(settings.models_file)
    session: aiohttp.ClientSession | None = None

    async def make_backend(entry: ModelEntry) -> Backend:
        nonlocal session
        if session is None:  # made on the runtime's loop, shared by every adapter
            session = make_http_session(concurrency, settings.request_timeout_seconds)
        return make_remote_backend(entry, session)

    async def close_session() -> None:
        if session is not None:
            await session.close()

    runtime = WorkerRuntime(
        settings,
        catalog,
        make_backend,
        kind="remote",
        max_in_flight=concurrency,
        on_stop=close_session,
    )
    runtime.start()
    try:
        run_worker(make_celery(settings), runtime, [REMOTE_QUEUE], threads=2, loglevel=loglevel)
    finally:
        runtime.stop()


def _gpu_entry(catalog: Catalog, model: str | None) -> ModelEntry:
    names = [e.name for e in catalog.values() if e.backend is BackendKind.VLLM]
    if model is None and len(names) == 1:
        return catalog[names[0]]
    if model in names:
        return catalog[model]
    raise ConfigError(f"choose one vllm model with --model (the models file has {names})")


def run_gpu_worker(settings: Settings, *, model: str | None, loglevel: str) -> None:
    """Load the engine once in this process, then feed it from the model's queue."""
    catalog = load_catalog(settings.models_file)
    entry = _gpu_entry(catalog, model)
    runtime = WorkerRuntime(
        settings,
        catalog,
        partial(make_gpu_backend, settings=settings),
        kind="gpu",
        max_in_flight=gpu_in_flight(entry, settings.chunk_size),
    )
    runtime.start(preload=[entry])  # the engine loads before the first message is taken
    try:
        # One thread: each message is admitted when the engine has room, then acked, so
        # the next message taken from Redis is always the most urgent one waiting.
        run_worker(
            make_celery(settings), runtime, [gpu_queue(entry.name)], threads=1, loglevel=loglevel
        )
    finally:
        runtime.stop()
