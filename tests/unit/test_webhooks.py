"""Webhook signing, the secret setting and the address checks that keep webhooks off
internal networks."""

from __future__ import annotations

import asyncio
import ipaddress
import stat
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from promptq.config import Settings
from promptq.webhooks import (
    AllowList,
    WebhookURLRefused,
    decode_secret,
    new_secret,
    refusal,
    resolve_target,
    signed_headers,
    signing_key,
)


def test_a_signed_delivery_verifies_with_the_standard_webhooks_library() -> None:
    secret = new_secret()
    body = b'{"type":"job.succeeded","data":{"id":"job_1"}}'
    headers = signed_headers(decode_secret(secret), "msg_1", body, int(time.time()))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["data"] == {"id": "job_1"}


def test_a_tampered_body_or_another_secret_does_not_verify() -> None:
    secret = new_secret()
    headers = signed_headers(decode_secret(secret), "msg_1", b"{}", int(time.time()))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"x":1}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(b"{}", headers)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-global"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        # IPv6 addresses that carry an IPv4 one are judged by what they reach.
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("2002:808:808::1", None),  # 6to4 of 8.8.8.8
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1
        ("2001:0:a00:1:8000:63bf:3fff:fdd2", "private"),  # Teredo, server 10.0.0.1
    ],
)
def test_internal_addresses_are_named_and_public_ones_pass(address: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


def _resolve(url: str, allow: list[str] | None = None) -> list[str]:
    target = asyncio.run(resolve_target(url, AllowList(allow or [])))
    return [str(a) for a in target.addresses]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "https://169.254.169.254/",
        "http://[::1]:9000/",
        "http://[::ffff:192.168.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
        "http://localhost/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http:///no-host",
        "http://example.com:99999/",
    ],
)
def test_webhook_urls_that_reach_inside_are_refused(url: str) -> None:
    with pytest.raises(WebhookURLRefused) as refused:
        _resolve(url)
    assert refused.value.code == "invalid_webhook_url"


def test_a_public_address_passes_without_a_lookup() -> None:
    assert _resolve("https://8.8.8.8/hook") == ["8.8.8.8"]


def test_the_allow_list_admits_networks_and_hostnames() -> None:
    assert _resolve("http://10.1.2.3/hook", ["10.0.0.0/8"]) == ["10.1.2.3"]
    assert _resolve("http://127.0.0.1:8080/", ["127.0.0.1"]) == ["127.0.0.1"]
    assert "127.0.0.1" in _resolve("http://LOCALHOST/", ["localhost."])
    with pytest.raises(WebhookURLRefused):
        _resolve("http://127.0.0.2/", ["127.0.0.1"])


def test_production_refuses_to_start_without_a_webhook_secret() -> None:
    with pytest.raises(ValidationError, match="PROMPTQ_WEBHOOK_SECRET is required"):
        Settings(environment="production")
    secret = new_secret()
    settings = Settings(environment="production", webhook_secret=secret)
    assert signing_key(settings) == decode_secret(secret)


@pytest.mark.parametrize("secret", ["hunter2", "whsec_not-base64!", "whsec_c2hvcnQ="])
def test_a_malformed_webhook_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValidationError, match="whsec_"):
        Settings(webhook_secret=secret)


def test_development_keeps_one_generated_secret_per_home(tmp_path: Path) -> None:
    first = signing_key(Settings(home=tmp_path / "home"))
    again = signing_key(Settings(home=tmp_path / "home"))
    other = signing_key(Settings(home=tmp_path / "other"))
    assert first == again != other and len(first) == 32
    mode = (tmp_path / "home" / "webhook_secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize(
    ("raw", "hosts"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("hooks.internal, 10.0.0.0/8", ["hooks.internal", "10.0.0.0/8"]),
        ('["127.0.0.1", "::1"]', ["127.0.0.1", "::1"]),
    ],
)
def test_allowed_hosts_come_as_json_or_comma_separated(
    raw: str, hosts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMPTQ_WEBHOOK_ALLOWED_HOSTS", raw)
    assert Settings().webhook_allowed_hosts == hosts


@pytest.mark.parametrize("url", ["http://localhost/hook", "http://no-such-host.invalid/hook"])
def test_a_refusal_never_says_what_a_name_resolves_to(url: str) -> None:
    # An internal name and an unresolvable one get the same answer, with no address in it
    with pytest.raises(WebhookURLRefused) as refused:
        _resolve(url)
    message = refused.value.message
    assert "127.0.0.1" not in message and "::1" not in message
    assert "resolves to" not in message and "Errno" not in message
    host = url.split("/")[2]
    assert message == (
        f"webhook_url host {host!r} cannot be called: it does not resolve to a public "
        "address (promptq does not call internal addresses; see webhook_allowed_hosts)."
    )
