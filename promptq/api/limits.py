"""Request size limits, enforced before the body is parsed: 413 as JSON."""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptq.api.errors import error_json
from promptq.errors import InvalidRequest

__all__ = ["BodySizeLimit"]


class _TooLarge(Exception):
    """The body passed its limit while the app was reading it."""


class BodySizeLimit:
    """Refuse bodies over `max_bytes` (uploads under /v1/files get `max_upload_bytes`)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/") == "/v1/files"
        limit = self.max_upload_bytes if upload else self.max_bytes
        length = dict(scope["headers"]).get(b"content-length")
        # A length too long for int() (4,300 digits) is too large anyway.
        if length is not None and length.isdigit() and (len(length) > 18 or int(length) > limit):
            await _refuse(send, limit)
            return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        # A body without a length (chunked) is counted as it arrives. The app may catch
        # the overflow while parsing (Starlette turns any form or JSON read error into a
        # 400), so the overflow is remembered and decides the response, whatever the app
        # answers.
        received = 0
        over = started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                if not started:
                    started = True
                    await _refuse(send, limit)
                return  # the app's own answer to the overflow is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if over and not started:
            await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    error = InvalidRequest(
        "payload_too_large", f"The request body is larger than {limit} bytes.", 413
    )
    body = json.dumps(error_json(error)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
