"""Provider error text reaches tenants scrubbed: a provider that echoes the request's
Authorization or x-api-key header back in its error (real HTTP on 127.0.0.1) does not leak
promptq's provider key."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from promptq.catalog import Backend, ModelEntry
from promptq.errors import AttemptError
from promptq.workers.completion import JobRequest
from promptq.workers.remote_worker import make_http_session, make_remote_backend

pytestmark = pytest.mark.anyio

PROVIDER_KEY = "sk-test-EchoedBackToTenants0123456789"


async def _echo_headers(request: web.Request) -> web.Response:
    # A careless provider: its 401 quotes every header it got.
    headers = {k: v for k, v in request.headers.items()}
    message = f"Invalid credentials in request headers {json.dumps(headers)}"
    return web.json_response({"error": {"message": message, "type": "auth"}}, status=401)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _echo_headers)
    app.router.add_post("/v1/messages", _echo_headers)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("backend", [Backend.OPENAI, Backend.ANTHROPIC])
async def test_an_echoed_provider_key_is_scrubbed_from_the_error(
    backend: Backend, echo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a model whose provider echoes request headers in its 401
    monkeypatch.setenv("ECHO_PROVIDER_KEY", PROVIDER_KEY)
    base = f"{echo_url}/v1" if backend is Backend.OPENAI else echo_url
    entry = ModelEntry(name="echo", backend=backend, base_url=base, api_key_env="ECHO_PROVIDER_KEY")
    session: aiohttp.ClientSession = make_http_session(4, 10)
    request = JobRequest(
        "job_1", 1, "echo", "echo", {"messages": [{"role": "user", "content": "x"}]}
    )
    # When a job is sent to it
    try:
        with pytest.raises(AttemptError) as failed:
            await make_remote_backend(entry, session).complete(request)
    finally:
        await session.close()
    # Then the error keeps the provider's words but not the key
    assert failed.value.provider_status == 401
    assert "Invalid credentials" in failed.value.message
    assert PROVIDER_KEY not in failed.value.message
    assert "EchoedBackToTenants" not in failed.value.message
    assert "[redacted]" in failed.value.message
