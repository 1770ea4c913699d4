"""Fixtures of the acceptance tests beyond the session's deployment (tests/conftest.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from promptq.db import create_sync_engine
from promptq.keys import hash_key
from tests.conftest import WEBHOOK_SECRET


@pytest.fixture(scope="session")
def webhook_secret(pg_url: str, api_key: str) -> str:
    """The webhook signing secret of the tests' API key (its owner is shown it once, at
    creation): the tenant's webhooks verify with it, not with the deployment's."""
    engine = create_sync_engine(pg_url)
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT webhook_secret FROM api_keys WHERE key_hash = :h"),
            {"h": hash_key(api_key)},
        ).scalar_one()
    engine.dispose()
    assert isinstance(found, str) and found != WEBHOOK_SECRET
    return found
