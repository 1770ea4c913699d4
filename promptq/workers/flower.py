"""`promptq flower`: Flower on promptq's own Celery app, every page behind its login.

Started with promptq's app, Flower reads queue depth over every Redis priority step
(a bare `celery flower` counts only Celery's default steps 0, 3, 6, 9, and promptq's bulk
lines sit at 5-9), and lists every queue of the models file, the interactive ones too.
Flower leaves /metrics, /healthcheck and a few views open even with `--basic-auth`; here
every handler checks the login first. The jobs themselves reach Flower as task events
sent by the workers (see `promptq.workers.task_events`)."""

from __future__ import annotations

import signal
import sys
from typing import Any

import structlog
from kombu.entity import Queue

from promptq.catalog import load_catalog
from promptq.cluster_view import queues_of
from promptq.config import Settings
from promptq.constants import PRIORITY_STEPS
from promptq.errors import ConfigError
from promptq.queues import delivery_queue
from promptq.workers.celery_app import make_celery

__all__ = ["list_every_queue", "protect_every_page", "run_flower"]

log = structlog.get_logger(__name__)


def protect_every_page() -> None:
    """Make every Flower handler (pages, API, /metrics, /healthcheck) ask for the login
    when one is configured."""
    from flower.api import BaseApiHandler
    from flower.views import BaseHandler

    for cls in (BaseHandler, BaseApiHandler):
        if getattr(cls.prepare, "_promptq_guarded", False):
            continue
        original = cls.prepare

        def prepare(self: Any, _original: Any = original) -> None:
            options = self.application.options
            if options.basic_auth:
                self.get_current_user()  # raises 401 unless the Basic credentials match
            _original(self)

        prepare._promptq_guarded = True  # type: ignore[attr-defined]
        cls.prepare = prepare


def list_every_queue() -> None:
    """Make Flower's broker page list the models file's queues, not only the queues of
    the workers it has seen (a GPU queue with no worker yet is where a backlog hides)."""
    from flower.views import BaseHandler

    if getattr(BaseHandler.get_active_queue_names, "_promptq_all", False):
        return
    seen_by_workers = BaseHandler.get_active_queue_names

    def get_active_queue_names(self: Any) -> list[str]:
        configured = {q.name for q in self.capp.conf.task_queues or []}
        return sorted(set(seen_by_workers(self)) | configured)

    get_active_queue_names._promptq_all = True  # type: ignore[attr-defined]
    BaseHandler.get_active_queue_names = get_active_queue_names


def _stop(signum: int, _frame: object) -> None:
    log.info("flower.stopping", signal=signum)
    sys.exit(0)


def run_flower(settings: Settings, *, port: int, address: str, basic_auth: str | None) -> None:
    """Serve Flower until SIGTERM/SIGINT."""
    from flower.app import Flower
    from flower.command import apply_env_options, extract_settings
    from flower.urls import settings as flower_settings
    from tornado.options import options

    if basic_auth is None and settings.environment == "production":
        raise ConfigError("Flower needs a login in production: set FLOWER_BASIC_AUTH=user:pass")
    apply_env_options()  # FLOWER_* variables, as `celery flower` reads them
    options.port = port
    options.address = address
    if basic_auth:
        if ":" not in basic_auth:
            raise ConfigError("--basic-auth must be USER:PASSWORD")
        options.basic_auth = [basic_auth]
    extract_settings()
    protect_every_page()
    list_every_queue()
    capp = make_celery(settings)
    queues = queues_of(load_catalog(settings.models_file))
    # Interactive chunks travel on queues of their own (promptq.queues.delivery_queue).
    names = dict.fromkeys(delivery_queue(q, step) for q in queues for step in range(PRIORITY_STEPS))
    capp.conf.task_queues = [Queue(name) for name in names]  # type: ignore[no-untyped-call]
    app = Flower(capp=capp, options=options, **flower_settings)
    signal.signal(signal.SIGTERM, _stop)
    app.start_http_server()
    log.info("flower.ready", port=port, address=address, auth=bool(options.basic_auth))
    try:
        app.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        app.stop()
