"""/metrics: open by default but without what the tenants stored; with METRICS_KEY, only for
that key or an admin key. No metric is labelled by tenant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from service.core.config import Settings

ADMIN = "metrics-admin-key-0123456789"
CLIENT = "metrics-client-key-0123456789"
METRICS = "metrics-scrape-key-0123456789"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def serve(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Callable[..., Any]
) -> Callable[..., Any]:
    def make(**overrides: Any) -> Any:
        return make_client(make_settings(sqlite_url, **overrides))

    return make


def test_without_any_key_everything_is_open(serve: Callable[..., Any]) -> None:
    body = serve().get("/metrics")
    assert body.status_code == 200
    assert 'liteembed_classes{status="ready"}' in body.text


def test_with_api_keys_an_open_scrape_sees_no_class_counts(serve: Callable[..., Any]) -> None:
    client = serve(admin_keys=[ADMIN], client_keys=[CLIENT])
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 200
    assert "liteembed_http_requests_total" in anonymous.text
    assert "liteembed_classes{" not in anonymous.text
    assert "liteembed_classes{" not in client.get("/metrics", headers=bearer(CLIENT)).text
    assert 'liteembed_classes{status="ready"}' in client.get("/metrics", headers=bearer(ADMIN)).text


def test_a_metrics_key_closes_it_to_everyone_else(serve: Callable[..., Any]) -> None:
    client = serve(admin_keys=[ADMIN], client_keys=[CLIENT], metrics_key=METRICS)
    for headers in ({}, bearer(CLIENT), bearer("not-the-metrics-key-0123")):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert "metrics key" in refused.json()["detail"]
        assert refused.headers["x-request-id"]
    for key in (METRICS, ADMIN):
        scraped = client.get("/metrics", headers=bearer(key))
        assert scraped.status_code == 200
        assert 'liteembed_classes{status="ready"}' in scraped.text


def test_no_metric_is_labelled_by_tenant(serve: Callable[..., Any], make_image: Any) -> None:
    client = serve()
    for tenant in ("acme", "globex"):
        files = [("images", ("a.png", make_image((200, 30, 30)), "image/png"))]
        answer = client.post(
            "/v1/classes", params={"tenant": tenant}, data={"name": "zorb"}, files=files
        )
        assert answer.status_code == 202, answer.text
    text = client.get("/metrics").text
    assert "tenant" not in text and "acme" not in text and "globex" not in text


def test_a_placeholder_metrics_key_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="LITEEMBED_METRICS_KEY"):
        make_settings("sqlite://", metrics_key="change-me-please-0123")
