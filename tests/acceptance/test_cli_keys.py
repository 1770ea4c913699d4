"""`promptq keys`: create shows a key and its webhook secret once; list, revoke and
rotate-webhook-secret administer keys against the deployment's database."""

from __future__ import annotations

import json

import httpx

from tests.acceptance.test_cli import promptq


def test_create_list_rotate_and_revoke_a_key(env: dict[str, str], api_url: str) -> None:
    # Given a key made with the CLI, its webhook secret shown once on stderr
    made = promptq("keys", "create", "rotating-team", env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert "whsec_" in made.stderr and token not in made.stderr
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{api_url}/v1/batches", headers=auth).status_code == 200
    # When it is listed, it shows as live with a secret of its own, and no token or secret
    listed = promptq("keys", "list", "--tenant", "rotating-team", "--json", env=env)
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["revoked_at"], row["own_webhook_secret"]) == (None, True)
    assert token not in listed.stdout and "whsec_" not in listed.stdout
    # When its webhook secret is rotated, a new one is printed
    rotated = promptq("keys", "rotate-webhook-secret", row["prefix"], env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("whsec_") and rotated.stdout.strip() not in made.stderr
    # When it is revoked, its token stops working at once, and list says so
    revoked = promptq("keys", "revoke", row["id"], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(f"{api_url}/v1/batches", headers=auth).status_code == 401
    listed = promptq("keys", "list", "--tenant", "rotating-team", "--json", env=env)
    assert json.loads(listed.stdout)["revoked_at"] is not None


def test_revoking_an_unknown_key_fails_cleanly(env: dict[str, str]) -> None:
    result = promptq("keys", "revoke", "key_nope", env=env)
    assert result.returncode == 1
    assert "No API key" in result.stderr and "Traceback" not in result.stderr
