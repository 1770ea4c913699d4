"""Slow and half-open clients cannot take the API from other tenants: a download that its
client never reads holds no database connection, slow uploads hold none while their body
trickles in, and each tenant's heavy requests are capped (429 beyond the cap)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.acceptance.helpers import chat_line, write_jsonl
from tests.conftest import make_key
from tests.procs import wait_for
from tests.stack import Stack

READERS = 30


@pytest.fixture(scope="module")
def roomy_api(stack: Stack) -> str:
    """An API that lets one tenant run 30 downloads at once: only the sessions are tested."""
    return stack.api({"PROMPTQ_TENANT_MAX_DOWNLOADS": str(READERS + 5)})


def _upload(api: str, key: str, path: Path) -> str:
    with path.open("rb") as fh:
        response = httpx.post(
            f"{api}/v1/files",
            files={"file": (path.name, fh)},
            data={"purpose": "batch"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


@pytest.fixture(scope="module")
def big_file(
    roomy_api: str, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """A tenant's 24 MB input file: far more than a socket buffers."""
    key = make_key(pg_url, "hoarder")
    lines = (chat_line(f"l-{i}", "words " * 200) for i in range(20_000))
    path = write_jsonl(tmp_path_factory.mktemp("big") / "big.jsonl", lines)
    return key, _upload(roomy_api, key, path)


def _open(api: str, request: bytes) -> socket.socket:
    host, port = api.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
    sock.connect((host, int(port)))
    sock.sendall(request)
    return sock


@pytest.fixture
def stalled_clients(roomy_api: str, big_file: tuple[str, str]) -> Iterator[list[socket.socket]]:
    """30 downloads of the big file that read their status line and then stop reading
    (half of them also close their sending side), and 10 uploads that send 10 bytes of a
    1 MB body and stall."""
    key, file_id = big_file
    get = (
        f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: api\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()
    post = (
        "POST /v1/files HTTP/1.1\r\nHost: api\r\nContent-Type: multipart/form-data; "
        f"boundary=x\r\nContent-Length: 1000000\r\nAuthorization: Bearer {key}\r\n\r\n--x\r\n"
    ).encode()
    clients: list[socket.socket] = []
    try:
        for i in range(READERS):
            sock = _open(roomy_api, get)
            sock.settimeout(30)
            assert sock.recv(12) == b"HTTP/1.1 200", "the download did not start"
            if i % 2:
                sock.shutdown(socket.SHUT_WR)
            clients.append(sock)
        clients.extend(_open(roomy_api, post) for _ in range(10))
        yield clients
    finally:
        for sock in clients:
            sock.close()


def test_thirty_stalled_downloads_leave_other_tenants_answering(
    roomy_api: str, pg_url: str, stalled_clients: list[socket.socket], tmp_path: Path
) -> None:
    # Given 30 downloads nobody reads and 10 stalled uploads, all from one tenant
    assert len(stalled_clients) == READERS + 10
    other = make_key(pg_url, "bystander")
    file_id = _upload(roomy_api, other, write_jsonl(tmp_path / "s.jsonl", [chat_line("a", "b")]))
    # When another tenant uses the API (a timeout well under the pool's 30 s wait)
    with httpx.Client(
        base_url=roomy_api, headers={"Authorization": f"Bearer {other}"}, timeout=10
    ) as client:
        for _ in range(5):
            # Then every request is answered, none with a 5xx
            assert client.get("/v1/batches").status_code == 200
            assert client.get(f"/v1/files/{file_id}").status_code == 200
            assert client.get(f"/v1/files/{file_id}/content").text.count("\n") == 1
        body = {"model": "sim-gpt", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/v1/jobs", json=body).status_code == 202
        assert httpx.get(f"{roomy_api}/readyz", timeout=10).status_code == 200


def test_a_tenants_downloads_past_its_cap_get_429(
    api_url: str, pg_url: str, tmp_path: Path
) -> None:
    # Given a tenant with the default cap of 4 downloads at once, and a file of 6 MB
    key = make_key(pg_url, "greedy")
    lines = (chat_line(f"l-{i}", "words " * 200) for i in range(5_000))
    file_id = _upload(api_url, key, write_jsonl(tmp_path / "g.jsonl", lines))
    get = (
        f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: api\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()
    held = [_open(api_url, get) for _ in range(4)]
    try:
        for sock in held:
            sock.settimeout(30)
            assert sock.recv(12) == b"HTTP/1.1 200"
        # When it asks for a fifth
        response = httpx.get(
            f"{api_url}/v1/files/{file_id}/content",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        # Then it is told to come back later, while other tenants are not limited by it
        assert response.status_code == 429, response.text[:200]
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "too_many_concurrent_requests"
    finally:
        for sock in held:
            sock.close()

    # And once its downloads end (the server sees the closed sockets), it may download again
    def download() -> bool:
        response = httpx.get(
            f"{api_url}/v1/files/{file_id}/content",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        return response.status_code == 200

    wait_for(download, 60, "a free download slot")
