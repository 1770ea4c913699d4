"""Webhooks through an outbox: an event is a row written in the transaction of the state
change it reports; the relay sends it signed in the Standard Webhooks format.

Webhook URLs are checked against server-side request forgery: http(s) only, and no host
that resolves to a private, loopback, link-local, multicast, reserved or unspecified
address unless `webhook_allowed_hosts` names it. The check runs at submit time and again
before every delivery, which then connects to the vetted address only."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from promptq.errors import ConfigError, InvalidRequest
from promptq.ids import new_id
from promptq.models import WebhookEvent, WebhookStatus, utcnow

if TYPE_CHECKING:
    from promptq.config import Settings

__all__ = [
    "AllowList",
    "IPAddress",
    "WebhookTarget",
    "WebhookURLRefused",
    "check_webhook_url",
    "decode_secret",
    "embedded_ipv4",
    "emit",
    "new_secret",
    "refusal",
    "resolve_target",
    "sign",
    "signed_headers",
    "signing_key",
]

log = structlog.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_SECRET_PREFIX = "whsec_"
_DEV_SECRET_FILE = "webhook_secret"
_RESOLVE_TIMEOUT = 5.0


class WebhookURLRefused(InvalidRequest):
    """A webhook URL promptq will not call: not http(s), unresolvable, or internal."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_webhook_url", message, 400)


def emit(
    session: AsyncSession, *, tenant: str, event_type: str, url: str, data: dict[str, Any]
) -> WebhookEvent:
    """Add a pending event to the session's transaction, so it commits with the change."""
    now = utcnow()
    event = WebhookEvent(
        id=new_id("msg_"),
        tenant=tenant,
        event_type=event_type,
        url=url,
        payload={
            "type": event_type,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": data,
        },
        status=WebhookStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(event)
    log.info("webhook.emitted", event_id=event.id, type=event_type, tenant=tenant)
    return event


# -- signing ------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form, `whsec_<base64>`."""
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix(_SECRET_PREFIX), validate=True)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(
    keys: bytes | Sequence[bytes], msg_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt; several keys (a
    rotation's grace period) give several space-separated signatures, any of which
    verifies."""
    keys = [keys] if isinstance(keys, bytes) else keys
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(key, msg_id, timestamp, body) for key in keys),
    }


def signing_key(settings: Settings) -> bytes:
    """The deployment's HMAC key, for tenants whose keys have no secret of their own: from
    PROMPTQ_WEBHOOK_SECRET, or in development one kept under `home`."""
    if settings.webhook_secret is not None:
        return decode_secret(settings.webhook_secret.get_secret_value())
    if settings.environment == "production":
        raise ConfigError("PROMPTQ_WEBHOOK_SECRET is required in production.")
    path = settings.home / _DEV_SECRET_FILE
    if not path.exists():
        _create_secret_file(path)
        log.warning("webhook.development_secret", path=str(path))
    return decode_secret(path.read_text().strip())


def _create_secret_file(path: Path) -> None:
    # Written aside and hard-linked into place: of two processes starting at once, one
    # secret wins and neither reads a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(new_secret() + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


# -- SSRF guard ---------------------------------------------------------------------------


class AllowList:
    """Hostnames and networks that webhooks may reach although they are internal."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.hosts.add(entry.strip().lower().rstrip("."))

    @classmethod
    def from_settings(cls, settings: Settings) -> AllowList:
        """The allow-list of `webhook_allowed_hosts`."""
        return cls(settings.webhook_allowed_hosts)

    def allows_host(self, host: str) -> bool:
        """Whether the hostname itself is trusted, whatever it resolves to."""
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """Whether an internal address lies in an allowed network."""
        return any(address in network for network in self.networks)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and reaches: IPv4-mapped, 6to4
    (2002::/16), Teredo (2001::/32, server and client) and NAT64 (64:ff9b::/96)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _kind(address: IPAddress) -> str | None:
    # The specific kinds first: 169.254.169.254 is "private" too, but "link-local" says more.
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "non-global"
    return None


def refusal(address: IPAddress) -> str | None:
    """Why a webhook may not go to `address` (e.g. 'private'), or None for a public one.
    An IPv6 address that carries an IPv4 one is judged by what it reaches."""
    embedded = embedded_ipv4(address)
    for inner in embedded:
        reason = _kind(inner)
        if reason is not None:
            return reason
    if isinstance(address, ipaddress.IPv6Address) and (
        address.ipv4_mapped is not None or address in _NAT64
    ):
        return None  # these reach exactly the (public) IPv4 address they carry
    return _kind(address)


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL and the addresses it may be sent to."""

    url: str
    host: str
    port: int
    addresses: list[IPAddress]


def _split(url: str) -> tuple[SplitResult, str, int]:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed or invalid [IPv6] host
        raise WebhookURLRefused("webhook_url is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookURLRefused("webhook_url must be an http:// or https:// URL with a host.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookURLRefused("webhook_url has an invalid port.") from None
    return parts, parts.hostname, port


def _refused(host: str) -> WebhookURLRefused:
    # One message whatever the cause: what a name resolves to (or that it does not) stays
    # inside, so the API cannot be used to map internal names.
    return WebhookURLRefused(
        f"webhook_url host {host!r} cannot be called: it does not resolve to a public "
        "address (promptq does not call internal addresses; see webhook_allowed_hosts)."
    )


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError) as exc:  # UnicodeError: not a valid IDNA name
        log.info("webhook.url_unresolved", host=host, error=repr(exc)[:200])
        raise _refused(host) from None
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        log.info("webhook.url_unresolved", host=host, error="no address")
        raise _refused(host)
    return found


async def resolve_target(url: str, allow: AllowList) -> WebhookTarget:
    """Resolve a webhook URL and vet every address; raises WebhookURLRefused."""
    _, host, port = _split(url)
    addresses = await _resolve(host, port)
    if not allow.allows_host(host):
        for address in addresses:
            reason = refusal(address)
            if reason is not None and not allow.allows_address(address):
                log.info("webhook.url_internal", host=host, address=str(address), kind=reason)
                if _is_literal(host):
                    # The client wrote the address itself: saying what kind it is reveals
                    # nothing.
                    raise WebhookURLRefused(
                        f"webhook_url names a {reason} address; promptq does not call "
                        "internal addresses (see webhook_allowed_hosts)."
                    )
                raise _refused(host)
    return WebhookTarget(url=url, host=host, port=port, addresses=addresses)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def check_webhook_url(url: str, settings: Settings) -> None:
    """Refuse, as 400 `invalid_webhook_url`, a webhook URL the relay would not call."""
    await resolve_target(url, AllowList.from_settings(settings))


if __name__ == "__main__":  # `python -m promptq.webhooks`: a new secret for production
    sys.stdout.write(new_secret() + "\n")
