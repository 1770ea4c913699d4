"""Several hosts on one machine: network namespaces joined by a bridge, for tests that cut
a host off the network (link down, not a process kill).

Every address is in a private /24 the test makes for itself inside its own namespaces;
no traffic leaves them and the loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from promptq.embedded import redis_binary
from tests.procs import Child, wait_for


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_available() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


@dataclass
class Host:
    """One namespace with one interface on the bridge."""

    name: str
    netns: str
    address: str
    link: str  # the bridge side of its veth pair: down means unplugged

    def run(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> Child:
        """Start a process inside this host."""
        return Child(name, ["ip", "netns", "exec", self.netns, *args], env, log_dir)

    def promptq(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> Child:
        return self.run(name, [sys.executable, "-m", "promptq", *args], env, log_dir)

    def listening(self, port: int) -> bool:
        """Whether something accepts TCP connections on this host's loopback at `port`."""
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
        command = ["ip", "netns", "exec", self.netns, sys.executable, "-c", probe]
        return subprocess.run(command, capture_output=True).returncode == 0


class Network:
    """A bridge in the root namespace (where the test runs) and hosts attached to it."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.prefix = f"pq{tag}"
        self.subnet = f"10.231.{int(tag, 16) % 250 + 1}"
        self.bridge = f"{self.prefix}br"
        self.hosts: list[Host] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def host(self, name: str) -> Host:
        """A new namespace at the next address of the subnet."""
        host = Host(
            name=name,
            netns=f"{self.prefix}{name}",
            address=f"{self.subnet}.{len(self.hosts) + 2}",
            link=f"{self.prefix}{name}",
        )
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", f"{host.link}p")
        _ip("link", "set", f"{host.link}p", "netns", host.netns)
        _ip("link", "set", host.link, "master", self.bridge)
        _ip("link", "set", host.link, "up")
        inside = ["netns", "exec", host.netns, "ip"]
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "link", "set", f"{host.link}p", "name", "eth0")
        _ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        self.hosts.append(host)
        return host

    def unplug(self, host: Host) -> None:
        """Take the host's link down: its packets go nowhere, its processes keep running."""
        _ip("link", "set", host.link, "down")

    def plug(self, host: Host) -> None:
        _ip("link", "set", host.link, "up")

    def close(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.link], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return str(found[-1])


class PostgresHost:
    """A private PostgreSQL server listening on a host's address (trust auth)."""

    def __init__(self, host: Host, log_dir: Path) -> None:
        # Its own directory under /tmp: the postgres user cannot enter pytest's (0700, root).
        data_dir = self.data_dir = Path(tempfile.mkdtemp(prefix="promptq-netns-pg-"))
        shutil.chown(data_dir, "postgres")
        initdb = [_pg_bin("initdb"), "-D", str(data_dir), "-A", "trust", "-U", "postgres"]
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *initdb], check=True, capture_output=True
        )
        with (data_dir / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {host.address.rsplit('.', 1)[0]}.0/24 trust\n")
        server = [_pg_bin("postgres"), "-D", str(data_dir), "-h", host.address, "-p", "5432"]
        server += ["-k", str(data_dir), "-c", "fsync=off", "-c", "max_connections=300"]
        # A host that drops off the network must not hold its locks for TCP's 15 minutes:
        # the server ends its sessions (as production should be configured too).
        server += ["-c", "idle_in_transaction_session_timeout=5s", "-c", "tcp_keepalives_idle=2"]
        server += ["-c", "tcp_keepalives_interval=1", "-c", "tcp_keepalives_count=3"]
        self.proc = host.run("postgres", ["runuser", "-u", "postgres", "--", *server], {}, log_dir)
        self.url = f"postgresql://postgres@{host.address}:5432/postgres"
        ready = [_pg_bin("pg_isready"), "-h", host.address, "-p", "5432", "-q"]
        wait_for(lambda: subprocess.run(ready).returncode == 0, 30, "postgres host")

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def redis_on(host: Host, log_dir: Path) -> tuple[Child, str]:
    """A redis-server listening on a host's address; returns it and its URL."""
    args = [redis_binary(), "--bind", host.address, "--port", "6379", "--save", ""]
    args += ["--appendonly", "no", "--protected-mode", "no"]
    return host.run("redis", args, {}, log_dir), f"redis://{host.address}:6379/0"
