"""What the sync and the async client share: construction of the HTTP session and the rules of
waiting for training."""

from __future__ import annotations

from typing import Any

from liteembed_client.errors import TrainingFailed
from liteembed_client.models import ClassInfo

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "liteembed-client"


def session_options(url: str, key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"User-Agent": USER_AGENT}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return {"base_url": url.rstrip("/"), "headers": headers, "timeout": timeout}


def done(info: ClassInfo) -> bool:
    """True once ready; raises TrainingFailed once failed; False while queued or training."""
    if info.status == "failed":
        raise TrainingFailed(info)
    return info.status == "ready"
