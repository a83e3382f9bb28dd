"""Per-key request rate limits (`RATE_LIMIT`), counted in Redis when the service has one, so
every API process counts against the same budget; in this process's memory otherwise.

A request over the limit is a 429 with `Retry-After`; every counted request's answer carries
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds), as the IETF draft
names them. When the counter store cannot be reached, requests pass: a Redis outage must not
take classification down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Where a request's decision waits for the headers middleware (`scope["state"]`).
STATE_KEY = "liteembed_rate_limit"
# One warning per this many seconds while the counter store is unreachable.
_WARN_EVERY_S = 30.0


@dataclass(frozen=True)
class Decision:
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


class RateLimiter:
    def __init__(self, spec: str, *, redis_url: str | None, namespace: str) -> None:
        from limits import parse_many
        from limits.aio import storage, strategies

        self.spec = spec
        self._items = parse_many(spec)
        store = (
            storage.RedisStorage(
                redis_url, implementation="redispy", key_prefix=f"{namespace}:ratelimit"
            )
            if redis_url
            else storage.MemoryStorage()
        )
        self._strategy = strategies.FixedWindowRateLimiter(store)
        self._warned_at = -math.inf

    async def check(self, identity: str) -> Decision | None:
        """Count one request of `identity`; a 429 when it is over a limit. None: the counter
        store could not be reached (the request passes)."""
        key = hashlib.sha256(identity.encode()).hexdigest()[:32]  # never a key in Redis
        try:
            tightest: Decision | None = None
            for item in self._items:
                allowed = await self._strategy.hit(item, key)
                stats = await self._strategy.get_window_stats(item, key)
                reset_s = max(1, math.ceil(stats.reset_time - time.time()))
                decision = Decision(item.amount, max(0, stats.remaining), reset_s)
                if not allowed:
                    raise HTTPException(
                        status.HTTP_429_TOO_MANY_REQUESTS,
                        f"rate limit exceeded: this key may make {item} requests "
                        f"(RATE_LIMIT {self.spec}); retry after {reset_s} s",
                        headers={"Retry-After": str(reset_s), **decision.headers()},
                    )
                if tightest is None or decision.remaining < tightest.remaining:
                    tightest = decision
            return tightest
        except HTTPException:
            raise
        except Exception as exc:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                log.warning("rate limit not enforced: its counters cannot be reached: %s", exc)
            return None


class RateLimitHeaders:
    """Adds a counted request's `RateLimit-*` headers to its answer (the check itself runs in
    `get_caller`, once the key is known to be valid, so unknown keys cost no counter)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision = scope.get("state", {}).get(STATE_KEY)
                if isinstance(decision, Decision):
                    headers = list(message.get("headers", []))
                    names = {name.lower() for name, _ in headers}
                    for name, value in decision.headers().items():
                        if name.lower().encode() not in names:
                            headers.append((name.lower().encode(), value.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
