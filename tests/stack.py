"""A whole promptq deployment for tests: its own Postgres database and Redis server, and
the API, workers and scheduler as child processes."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import redis
import sqlalchemy as sa

from promptq.db import Database, create_sync_engine
from promptq.keys import create_key
from promptq.migrate import upgrade
from tests.procs import Child, free_port, redis_args, wait_for, wait_http

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def create_database(prefix: str = "promptq_test") -> str:
    """A new, migrated database; returns its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_sync_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    return url


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_sync_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def make_key(pg_url: str, name: str, *, tenant: str | None = None, admin: bool = False) -> str:
    """A new API key, made the way `promptq keys create` makes one."""

    async def _create() -> str:
        db = Database(pg_url)
        try:
            async with db.session() as session:
                token, _ = await create_key(session, name, tenant=tenant, admin=admin)
                return token
        finally:
            await db.dispose()

    return asyncio.run(_create())


class RedisServer:
    """A private redis-server, so tests may flush, stop or restart it."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.proc: Child | None = None
        self.start()

    def start(self) -> None:
        self.proc = Child("redis", redis_args(self.port), {}, self.log_dir)
        wait_for(self.ping, 15, "redis")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()


class Stack:
    """Processes of one promptq deployment sharing `env`."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: list[Child] = []

    def _start(self, name: str, args: list[str], extra: dict[str, str] | None = None) -> Child:
        child = Child.promptq(name, args, {**self.env, **(extra or {})}, self.log_dir)
        self.children.append(child)
        return child

    def api(self, extra: dict[str, str] | None = None) -> str:
        """Start an API process; returns its base URL once it answers."""
        port = free_port()
        child = self._start("api", ["api", "--port", str(port)], extra)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/healthz")
        except TimeoutError:
            raise AssertionError(child.log_text()) from None
        return url

    def worker(self, *args: str) -> Child:
        """Start a remote worker; returned once it consumes its queue."""
        child = self._start("worker", ["worker", "remote", "--concurrency", "64", *args])
        wait_for(lambda: "worker.ready" in child.log_text() or not child.alive(), 60, "worker")
        assert child.alive(), child.log_text()
        return child

    def scheduler(self) -> Child:
        return self._start("scheduler", ["scheduler"])

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
