"""When to try a request again: after a 503 (the service is not ready and says so, nothing was
done) or a refused connection (nothing was sent), a bounded number of times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from liteembed_client.errors import ConnectionFailed, error_for


@dataclass(frozen=True)
class RetryPolicy:
    # Tries after the first one; 0 turns retrying off.
    max_retries: int = 3
    # Longest single wait. A service asking (Retry-After) for longer is not waited for: the
    # ServiceUnavailable is raised at once, with its `retry_after`.
    max_wait: float = 30.0
    # First wait when the service does not say how long; doubled on each retry.
    backoff: float = 0.5

    def wait_before_retry(
        self, retry: int, outcome: httpx.Response | httpx.TransportError
    ) -> float:
        """Seconds to wait before retry number `retry` (0-based); raises the error the caller
        should see when no retry is due."""
        if isinstance(outcome, httpx.TransportError):
            # A refused or failed connect sent nothing; anything later (a read timeout) may have
            # been processed, and is not repeated.
            if isinstance(outcome, httpx.ConnectError) and retry < self.max_retries:
                return min(self.backoff * 2**retry, self.max_wait)
            raise ConnectionFailed(f"{type(outcome).__name__}: {outcome}") from outcome
        retry_after = parse_retry_after(outcome.headers.get("retry-after"))
        if retry >= self.max_retries or (retry_after is not None and retry_after > self.max_wait):
            raise error_for(outcome, retry_after=retry_after)
        if retry_after is not None:
            return retry_after
        return min(self.backoff * 2**retry, self.max_wait)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110); None if absent or bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
