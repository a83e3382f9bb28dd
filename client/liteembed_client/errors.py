"""Errors the client raises: one class per failure a caller may want to handle differently."""

from __future__ import annotations

from typing import Any

import httpx


class LiteEmbedClientError(Exception):
    """Base class of every error the client raises on purpose."""


class ConnectionFailed(LiteEmbedClientError):
    """The service could not be reached (refused, DNS, TLS, timeout)."""


class ApiError(LiteEmbedClientError):
    """The service answered with an error status; `detail` is its readable explanation."""

    status_code: int = 0

    def __init__(self, status_code: int, detail: str, body: Any = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.body = body


class BadRequest(ApiError):
    """400: e.g. an image that cannot be decoded."""


class Unauthorized(ApiError):
    """401: no key, or a key the service does not know."""


class Forbidden(ApiError):
    """403: a valid key without the right (an admin route with a client key)."""


class NotFound(ApiError):
    """404: no class with that id."""


class Conflict(ApiError):
    """409: a class of that name exists, or the class is not ready yet."""


class PayloadTooLarge(ApiError):
    """413: too many bytes or pixels."""


class UnsupportedMediaType(ApiError):
    """415: a file that is not an image type."""


class InvalidRequest(ApiError):
    """422: a missing or invalid field (name, hints, labels, limits)."""


class ServiceUnavailable(ApiError):
    """503: not ready (model loading, database or broker down); `retry_after` in seconds when the
    service said when to come back. Raised once the client's retries are used up."""

    def __init__(
        self, status_code: int, detail: str, body: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status_code, detail, body)
        self.retry_after = retry_after


class TooManyRequests(ApiError):
    """429: the key's rate limit (the service's RATE_LIMIT) is spent; `retry_after` in seconds."""

    def __init__(
        self, status_code: int, detail: str, body: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status_code, detail, body)
        self.retry_after = retry_after


class ServerError(ApiError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
}


class TrainingFailed(LiteEmbedClientError):
    """The class ended `failed`; `info.error` says why."""

    def __init__(self, info: Any) -> None:
        super().__init__(f"class {info.name!r} ({info.id}) failed: {info.error}")
        self.info = info


class WaitTimeout(LiteEmbedClientError, TimeoutError):
    """A wait for a class to finish training ran out; `info` is its last state."""

    def __init__(self, info: Any, timeout: float) -> None:
        super().__init__(f"class {info.name!r} ({info.id}) still {info.status} after {timeout:g} s")
        self.info = info


def detail_of(response: httpx.Response) -> tuple[str, Any]:
    """The readable `detail` of an error response, and the parsed body."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return (text[:500] or response.reason_phrase or "error"), text
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's default validation shape
        detail = "; ".join(str(item.get("msg", item)) for item in detail if item)
    return (str(detail) if detail else response.reason_phrase or "error"), body


def error_for(response: httpx.Response, *, retry_after: float | None = None) -> ApiError:
    """The exception for an error response, chosen by its status code."""
    detail, body = detail_of(response)
    code = response.status_code
    if code == 503:
        return ServiceUnavailable(code, detail, body, retry_after=retry_after)
    if code == 429:
        try:
            wait = float(response.headers.get("retry-after", ""))
        except ValueError:
            wait = None
        return TooManyRequests(code, detail, body, retry_after=wait)
    if code in _BY_STATUS:
        return _BY_STATUS[code](code, detail, body)
    if code >= 500:
        return ServerError(code, detail, body)
    return ApiError(code, detail, body)
