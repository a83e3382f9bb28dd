"""Talking to the app under test."""

from __future__ import annotations

import time
from typing import Any


def wait_for_status(
    client: Any, class_id: str, wanted: set[str], timeout: float = 60.0, headers: Any = None
) -> dict[str, Any]:
    """Poll GET /v1/classes/{id} until its status is one of `wanted`; returns the last body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/classes/{class_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in wanted:
            return body
        time.sleep(0.1)
    raise AssertionError(f"class {class_id} never reached {wanted}; last: {body}")
