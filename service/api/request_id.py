"""X-Request-ID: taken from the request when it is a sane token, else generated; echoed on the
response and stamped on every log line written while the request is handled."""

from __future__ import annotations

import random
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.log_config import request_id

HEADER = "x-request-id"
# What a proxy or client may pass through: printable, no spaces, bounded (it lands in logs).
_ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def accepted_or_new(value: str | None) -> str:
    if value is not None and _ACCEPTED.fullmatch(value):
        return value
    # 128 random bits as 32 hex digits (uuid4().hex's shape), from `random` rather than
    # os.urandom: the id needs to be unique, not secret, and urandom's system call releases the
    # GIL on the event loop, which under load then waits for a busy decoding or model thread to
    # give it back (profiled at concurrency 16: a quarter of the loop's time). The module's
    # generator is reseeded in a forked child, so worker processes do not repeat each other.
    return f"{random.getrandbits(128):032x}"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == HEADER.encode():
                incoming = value.decode("latin-1")
                break
        rid = accepted_or_new(incoming)
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k != HEADER.encode()]
                headers.append((HEADER.encode(), rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
