"""Start a remote or GPU worker process: the runtime first (database pool, backends, the
supervised side tasks), then Celery's consumer feeding it, or in burst mode no consumer
at all. Also `--check`, the health probe of a worker kind."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
import redis
import structlog
from celery import Celery, signals

from promptq.catalog import Backend as BackendKind
from promptq.catalog import Catalog, ModelEntry, load_catalog
from promptq.config import Settings
from promptq.constants import (
    REMOTE_INTERACTIVE_QUEUE,
    REMOTE_QUEUE,
    TASK_RUN_CHUNK,
    gpu_interactive_queue,
    gpu_queue,
)
from promptq.errors import ConfigError
from promptq.queues import BULK_BAND
from promptq.workers.beacon import live_workers
from promptq.workers.celery_app import make_celery
from promptq.workers.completion import Backend
from promptq.workers.gpu_worker import gpu_in_flight, make_gpu_backend
from promptq.workers.interactive import InteractiveConsumer
from promptq.workers.remote_worker import make_http_session, make_remote_backend
from promptq.workers.runtime import WorkerRuntime
from promptq.workers.side_tasks import BEATS_TO_LIVE, beat_interval
from promptq.workers.telemetry import worker_description

__all__ = [
    "check_workers",
    "connection_limit",
    "remote_runtime",
    "run_gpu_worker",
    "run_remote_worker",
    "serve",
]

log = structlog.get_logger(__name__)


def _stop_this_process(reason: str) -> None:
    # A side task died: SIGTERM starts Celery's warm shutdown (running jobs drain and the
    # rest are handed back); `serve` then exits non-zero so the orchestrator restarts it.
    log.critical("worker.stopping_after_death", reason=reason, pid=os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def _register_task(app: Celery, runtime: WorkerRuntime) -> None:
    @app.task(name=TASK_RUN_CHUNK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_chunk(job_ids: list[str], step: int = BULK_BAND, alone: bool = False) -> int:
        # Acked once the jobs are claimed: from then on Postgres leases protect them.
        return runtime.admit(list(job_ids), int(step), bool(alone))


def _consume(
    app: Celery, runtime: WorkerRuntime, queues: list[str], *, threads: int, loglevel: str
) -> None:
    # Celery's worker on `queues`, a thread pool whose threads hand chunks to the runtime.
    _register_task(app, runtime)

    def _shutdown(**_: Any) -> None:
        log.info("worker.stopping", owner=runtime.owner, in_flight=runtime.in_flight)
        runtime.stop()

    def _ready(**_: Any) -> None:
        log.info("worker.ready", owner=runtime.owner, queues=queues)

    app.conf.promptq_worker = worker_description(
        runtime.kind, runtime.catalog, queues, runtime.max_in_flight
    )
    signals.worker_ready.connect(_ready, weak=False)
    signals.worker_shutdown.connect(_shutdown, weak=False)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={threads}",
            f"--queues={','.join(queues)}",
            f"--hostname={runtime.owner.replace(':', '-')}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def serve(
    settings: Settings,
    runtime: WorkerRuntime,
    queues: list[str],
    *,
    threads: int,
    loglevel: str,
    burst: bool = False,
    preload: list[ModelEntry] | None = None,
    interactive_queue: str | None = None,
) -> None:
    """Start the runtime, then consume `queues` until shutdown (or, with `burst`, run
    their queued jobs until none is left). Exits non-zero if a side task died.
    `interactive_queue` gets a consumer thread of its own."""
    runtime.start(preload)
    interactive: InteractiveConsumer | None = None
    try:
        if burst:
            counters = runtime.run_until_idle(queues)  # from Postgres: no broker queue
            log.info("worker.burst_done", owner=runtime.owner, **counters)
        else:
            app = make_celery(settings)
            if interactive_queue:
                interactive = InteractiveConsumer(app, runtime, interactive_queue)
                interactive.start()
            try:
                _consume(app, runtime, queues, threads=threads, loglevel=loglevel)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    raise
    finally:
        if interactive is not None:
            interactive.stop()
        runtime.stop()
    if runtime.supervisor.death is not None:
        sys.exit(f"promptq worker stopped: {runtime.supervisor.death}")


def connection_limit(concurrency: int) -> int:
    """HTTP connections of a remote worker running `concurrency` bulk calls: interactive
    jobs are admitted beyond that (runtime.has_room), and get connections of their own
    rather than waiting for one a bulk call holds (a provider latency, measured)."""
    return concurrency + max(8, concurrency // 4)


def remote_runtime(
    settings: Settings, *, concurrency: int, on_death: Callable[[str], None] | None = None
) -> WorkerRuntime:
    """The runtime of a remote worker: every openai/anthropic model of the models file over
    one pooled HTTP session, `concurrency` requests at once."""
    catalog = load_catalog(settings.models_file)
    session: aiohttp.ClientSession | None = None

    async def make_backend(entry: ModelEntry) -> Backend:
        nonlocal session
        if session is None:  # made on the runtime's loop, shared by every adapter
            limit = connection_limit(concurrency)
            session = make_http_session(limit, settings.request_timeout_seconds)
        return make_remote_backend(entry, session)

    async def close_session() -> None:
        if session is not None:
            await session.close()

    return WorkerRuntime(
        settings,
        catalog,
        make_backend,
        kind="remote",
        max_in_flight=concurrency,
        on_stop=close_session,
        on_death=on_death,
        traffic=True,
    )


def run_remote_worker(
    settings: Settings, *, concurrency: int, loglevel: str, burst: bool = False
) -> None:
    """Serve every openai/anthropic model of the models file, `concurrency` requests at once."""
    on_death = None if burst else _stop_this_process
    runtime = remote_runtime(settings, concurrency=concurrency, on_death=on_death)
    serve(
        settings,
        runtime,
        [REMOTE_QUEUE],
        threads=2,
        loglevel=loglevel,
        burst=burst,
        interactive_queue=REMOTE_INTERACTIVE_QUEUE,
    )


def _gpu_entry(catalog: Catalog, model: str | None) -> ModelEntry:
    names = [e.name for e in catalog.values() if e.backend is BackendKind.VLLM]
    if model is None and len(names) == 1:
        return catalog[names[0]]
    if model in names:
        return catalog[model]
    raise ConfigError(f"choose one vllm model with --model (the models file has {names})")


def run_gpu_worker(
    settings: Settings, *, model: str | None, loglevel: str, burst: bool = False
) -> None:
    """Load the engine once in this process, then feed it from the model's queue."""
    catalog = load_catalog(settings.models_file)
    entry = _gpu_entry(catalog, model)
    runtime = WorkerRuntime(
        settings,
        catalog,
        partial(make_gpu_backend, settings=settings),
        kind="gpu",
        max_in_flight=gpu_in_flight(entry, settings.chunk_size),
        on_death=None if burst else _stop_this_process,
    )
    # One thread: each message is admitted when the engine has room, then acked, so the
    # next message taken from Redis is always the most urgent one waiting. The engine
    # loads (preload) before the first message is taken. Interactive chunks come on a queue
    # of their own, whose consumer admits them at once: that thread is often blocked.
    queues = [gpu_queue(entry.name)]
    serve(
        settings,
        runtime,
        queues,
        threads=1,
        loglevel=loglevel,
        burst=burst,
        preload=[entry],
        interactive_queue=gpu_interactive_queue(entry.name),
    )


def check_workers(settings: Settings, kind: str) -> int:
    """The health probe: 0 and a line per worker if a `kind` worker beat recently, else 1.
    A worker beats every min(lease_seconds / 3, 10) seconds."""
    max_age = beat_interval(settings) * BEATS_TO_LIVE
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        alive = live_workers(client, kind, max_age)
    except redis.RedisError as exc:
        sys.stderr.write(f"promptq worker {kind} --check: Redis unreachable: {exc}\n")
        return 2
    finally:
        client.close()
    if not alive:
        sys.stderr.write(f"promptq worker {kind} --check: no live {kind} worker\n")
        return 1
    for record in alive:
        fields = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("kind", "owner"))
        sys.stdout.write(f"{record['owner']} alive {fields}\n")
    return 0
