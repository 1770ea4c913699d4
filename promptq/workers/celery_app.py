"""The Celery app: Redis broker with priority steps, late acks, worker events for Flower."""

from __future__ import annotations

from celery import Celery

from promptq.config import Settings
from promptq.constants import PRIORITY_STEPS, REMOTE_QUEUE

__all__ = ["make_celery"]


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the settings' Redis; the queues carry chunks of job ids."""
    app = Celery("promptq", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=REMOTE_QUEUE,
        # A message is acked only once its jobs are claimed in Postgres; a worker that
        # dies before that leaves the message to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "priority_steps": list(range(PRIORITY_STEPS)),
            "queue_order_strategy": "priority",
            # Longer than any lease: the sweeper, not Redis, recovers running jobs.
            "visibility_timeout": settings.visibility_timeout,
            # A message a dead worker had taken (not yet acked) goes back to its queue once
            # the visibility timeout has passed, at the next scan of the unacked index.
            # kombu scans every interval x throttle seconds (10 x 10 by default: up to 100 s
            # late); every 5 s here, one ZRANGE per worker.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
        # A submission must not hang on a broker that is down: the job is already stored
        # and the sweeper sends it once Redis is back.
        broker_connection_timeout=2,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Flower shows jobs, not chunk messages: the workers send one task event per job
        # (promptq.workers.telemetry); Celery's own events for run_chunk would count each
        # chunk as a task. Workers still send their heartbeats, so Flower lists them.
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
