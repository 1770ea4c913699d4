"""The side tasks of a worker process (heartbeat, batch checker, result writer) under
watch: one that ends while the worker runs stops the worker, loudly, so that its
orchestrator restarts it, instead of leases quietly expiring."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

__all__ = ["Supervisor", "WorkerDied"]

log = structlog.get_logger(__name__)


class WorkerDied(RuntimeError):
    """A side task of the worker ended; the worker must stop."""


class Supervisor:
    """Named side tasks on one event loop; `on_death(reason)` is called once if one ends
    before `stop()`."""

    def __init__(self, owner: str, on_death: Callable[[str], None]) -> None:
        self.owner = owner
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.death: str | None = None
        self._on_death = on_death
        self._stopping = False

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[Any]:
        """Run `coro` as the side task `name`; it is meant to run until `stop()`."""
        return self.watch(name, asyncio.get_running_loop().create_task(coro, name=name))

    def watch(self, name: str, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """Watch a side task started elsewhere (e.g. the result writer's)."""
        self.tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))
        return task

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._stopping or self.death is not None:
            return
        if task.cancelled():
            reason = "was cancelled"
        elif (error := task.exception()) is not None:
            reason = f"raised {error!r}"
        else:
            reason = "returned"
        self.death = f"side task {name!r} {reason}"
        log.critical(
            "worker.side_task_died",
            owner=self.owner,
            task=name,
            reason=reason,
            action="stopping the worker",
            exc_info=task.exception() if not task.cancelled() else None,
        )
        self._on_death(self.death)

    def expect_end(self) -> None:
        """The worker is stopping: side tasks that end from now on are not deaths."""
        self._stopping = True

    def check(self) -> None:
        """Raise WorkerDied if a side task has ended."""
        if self.death is not None:
            raise WorkerDied(self.death)

    async def stop(self) -> None:
        """Cancel every side task (their ending is then expected) and wait for them."""
        self.expect_end()
        pending = {task for task in self.tasks.values() if not task.done()}
        while pending:
            # Again until they end: redis-py can swallow a cancel that lands mid-command.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
