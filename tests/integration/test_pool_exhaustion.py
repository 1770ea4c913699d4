"""An API whose every database connection is taken answers 503 `database_busy` with
Retry-After, never a 500, and answers normally once a connection is free."""

from __future__ import annotations

import httpx
import pytest

from promptq.api.app import create_app
from promptq.config import Settings
from promptq.db import Database
from promptq.keys import create_key

pytestmark = pytest.mark.anyio


async def test_a_request_that_finds_no_free_connection_gets_503(
    db: Database, integration_pg_url: str
) -> None:
    # Given an API with a pool of one connection (and one in overflow), both taken
    async with db.session() as session:
        token, _ = await create_key(session, "busy")
    settings = Settings.model_validate(
        {
            "database_url": integration_pg_url,
            "db_pool_size": 1,
            "db_pool_timeout_seconds": 0.2,
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        engine = app.state.promptq.db.engine
        held = [await engine.connect() for _ in range(2)]
        transport = httpx.ASGITransport(app=app)
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            # When a request needs one
            busy = await client.get("/v1/batches", headers=auth)
            # Then it is told to retry, with a code, not failed with a 500
            assert busy.status_code == 503, busy.text
            assert busy.json()["error"]["code"] == "database_busy"
            assert busy.headers["retry-after"] == "1"
            # And once a connection is free, the same request works
            await held.pop().close()
            assert (await client.get("/v1/batches", headers=auth)).status_code == 200
        for conn in held:
            await conn.close()
