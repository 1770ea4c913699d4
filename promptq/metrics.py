"""Prometheus metrics of one promptq process, and the /metrics endpoint workers and the
scheduler serve on `--metrics-port` (the API serves its own, see `promptq.cluster_view`).

Counters count what this process did since it started; Prometheus sums them over
processes. Labels stay bounded: model, deployment, outcome, error code, never a job id."""

from __future__ import annotations

import hmac
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import REGISTRY, CollectorRegistry

__all__ = [
    "COST",
    "ENGINE_REQUESTS",
    "IN_FLIGHT",
    "JOBS_FINISHED",
    "JOB_DURATION",
    "PREEMPTED",
    "PREEMPTED_TOKENS",
    "PROVIDER_REQUESTS",
    "PURGED",
    "QUEUE_WAIT",
    "SWEEPER_ACTIONS",
    "SWEEPER_ACTION_NAMES",
    "TOKENS",
    "TTFT",
    "WEBHOOK_DELIVERIES",
    "MetricsServer",
    "authorized",
    "render",
]

# Seconds: a short chat reply to a long generation, and a queue wait of minutes to a day.
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

PROVIDER_REQUESTS = Counter(
    "promptq_provider_requests",
    "Requests to a backend (provider API or engine), by outcome: ok, rate_limited, "
    "retryable_error, terminal_error.",
    ["model", "deployment", "outcome"],
)
TOKENS = Counter(
    "promptq_tokens", "Tokens of finished jobs, by kind: prompt or completion.", ["model", "kind"]
)
COST = Counter("promptq_cost_usd", "Cost in USD of finished jobs.", ["model"])
JOBS_FINISHED = Counter(
    "promptq_jobs_finished",
    "Jobs this process finished, by outcome (succeeded, failed, expired) and error code.",
    ["model", "outcome", "code"],
)
JOB_DURATION = Histogram(
    "promptq_job_duration_seconds",
    "From the job's start on a worker to its result.",
    ["model"],
    buckets=_DURATION_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "promptq_job_queue_wait_seconds",
    "From the job's creation to its start on a worker.",
    ["model"],
    buckets=_WAIT_BUCKETS,
)
TTFT = Histogram(
    "promptq_ttft_seconds", "Time to the first token (GPU).", ["model"], buckets=_TTFT_BUCKETS
)
IN_FLIGHT = Gauge("promptq_in_flight", "Jobs this worker is running now.", ["model"])
ENGINE_REQUESTS = Gauge(
    "promptq_engine_requests",
    "Requests inside the GPU worker's engine, by state: running or waiting.",
    ["model", "state"],
)
PREEMPTED = Counter(
    "promptq_preempted",
    "Bulk requests the GPU worker aborted so that an interactive one starts at once; each "
    "runs again, first in line.",
    ["model"],
)
PREEMPTED_TOKENS = Counter(
    "promptq_preempted_tokens",
    "Tokens preempted requests had generated before the abort: work done twice.",
    ["model"],
)
PURGED = Counter("promptq_purged_rows", "Rows removed by retention, per table.", ["table"])
SWEEPER_ACTIONS = Counter(
    "promptq_sweeper_actions",
    "What the scheduler's sweeper did, by action: requeued (a lease expired with attempts "
    "left), failed (a lease expired on the last attempt: max_attempts_exceeded), published "
    "(queued jobs whose message was sent again), expired_jobs (queued native jobs past "
    "their deadline), expired_batches, finalized_batches, "
    "validations_resumed (batches left validating by their API, validated here).",
    ["action"],
)
#: The sweeper's actions, each exported from the start (at 0) so a rate can be taken.
SWEEPER_ACTION_NAMES = (
    "requeued",
    "failed",
    "published",
    "expired_jobs",
    "expired_batches",
    "finalized_batches",
    "validations_resumed",
)
for _action in SWEEPER_ACTION_NAMES:
    SWEEPER_ACTIONS.labels(action=_action)
WEBHOOK_DELIVERIES = Counter(
    "promptq_webhook_deliveries",
    "Webhook delivery attempts of the relay, by outcome: delivered, retry (failed, tried "
    "again later) or failed (given up).",
    ["outcome"],
)
for _outcome in ("delivered", "retry", "failed"):
    WEBHOOK_DELIVERIES.labels(outcome=_outcome)


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an Authorization header carries the metrics token (always, if none is set)."""
    if not token:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(registry)


class _Handler(BaseHTTPRequestHandler):
    token: str | None = None

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        if not authorized(self.headers.get("Authorization"), self.token):
            self.send_response(401)
            self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            return
        body = render()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
        return


class MetricsServer:
    """/metrics on a port of this process, in a daemon thread; `token` (if set) is required
    as `Authorization: Bearer <token>`."""

    def __init__(self, port: int, *, host: str = "0.0.0.0", token: str | None = None) -> None:
        handler = type("MetricsHandler", (_Handler,), {"token": token})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="promptq-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
