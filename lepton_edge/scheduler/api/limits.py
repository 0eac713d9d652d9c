"""Request limits applied before any route runs: the body size (413) and the ``Host`` header (400)."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "TrustedHostMiddleware", "too_large_detail"]


def too_large_detail(limit: int) -> str:
    return f"request body over the API's {limit}-byte limit (api.max_body_bytes in the scheduler config)"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body without (or with a lying) Content-Length passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_detail(limit))


class BodyLimitMiddleware:
    """Refuses a request body over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is answered at once, before a byte of the body is read; a
    body streamed without one is counted as it is received and refused once it passes the limit, so at most
    ``max_bytes`` (plus one chunk) is ever held.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"detail": too_large_detail(limit), "problems": []}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
