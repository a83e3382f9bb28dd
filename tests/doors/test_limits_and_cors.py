"""Through real `serve` processes: a key's RATE_LIMIT counted in Redis across two API processes
(429 with Retry-After and RateLimit-* headers, other keys unaffected); TENANT_MAX_CLASSES
refusing a registration over the quota (a client key freeing a place by deleting its own
class); a browser's CORS preflight answered for an allowed origin only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from liteembed_client import Client, TooManyRequests
from tests.helpers.images import class_images
from tests.helpers.live_server import LiveServer, running_server

ORIGIN = "https://app.example.com"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api_pair(
    tmp_path: Path, cache_dir: Path, redis_server_url: str, redis_namespace: str
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two API processes on one database and one Redis, each key allowed 5 requests an hour."""
    env = {
        "LITEEMBED_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "LITEEMBED_REDIS_URL": redis_server_url,
        "LITEEMBED_REDIS_NAMESPACE": redis_namespace,
        "LITEEMBED_RATE_LIMIT": "5/hour",
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ExitStack() as stack:
        first = stack.enter_context(running_server(tmp_path / "a", cache_dir, env=env))
        second = stack.enter_context(running_server(tmp_path / "b", cache_dir, env=env))
        yield first, second


@pytest.mark.redis
def test_a_keys_rate_limit_holds_across_api_processes(
    api_pair: tuple[LiveServer, LiveServer],
) -> None:
    first, second = api_pair
    key = first.client_key
    remaining = []
    for server in (first, second, first, second, first):
        answer = httpx.get(f"{server.url}/v1/vocabulary", headers=_bearer(key), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["RateLimit-Limit"] == "5"
        remaining.append(int(answer.headers["RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    for server in (second, first):
        refused = httpx.get(f"{server.url}/v1/vocabulary", headers=_bearer(key), timeout=30)
        assert refused.status_code == 429, refused.text
        assert "rate limit" in refused.json()["detail"] and "5/hour" in refused.json()["detail"]
        assert 0 < int(refused.headers["Retry-After"]) <= 3600
        assert refused.headers["RateLimit-Remaining"] == "0"
    with Client(second.url, key) as client, pytest.raises(TooManyRequests) as exc:
        client.vocabulary()
    assert exc.value.retry_after is not None and exc.value.retry_after > 0
    # Another key has its own budget; the open probes are not counted.
    other = httpx.get(f"{second.url}/v1/models", headers=_bearer(first.admin_key), timeout=30)
    assert other.status_code == 200 and other.headers["RateLimit-Remaining"] == "4"
    assert httpx.get(f"{first.url}/healthz").status_code == 200


@pytest.fixture
def quota_server(tmp_path: Path, cache_dir: Path) -> Iterator[LiveServer]:
    env = {"LITEEMBED_TENANT_MAX_CLASSES": "2", "LITEEMBED_CORS_ORIGINS": ORIGIN}
    with running_server(tmp_path, cache_dir, env=env) as server:
        yield server


def test_a_tenant_over_its_quota_is_refused_until_it_deletes_a_class(
    quota_server: LiveServer,
) -> None:
    admin = httpx.Client(base_url=quota_server.url, headers=_bearer(quota_server.admin_key))
    keys = {
        tenant: admin.post("/v1/keys", json={"role": "client", "tenant": tenant}).json()["key"]
        for tenant in ("acme", "globex")
    }
    acme = httpx.Client(base_url=quota_server.url, headers=_bearer(keys["acme"]), timeout=60)
    ids = []
    for name in ("one", "two"):
        answer = acme.post("/v1/classes", data={"name": name}, files=class_images("green", 1))
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    over = acme.post("/v1/classes", data={"name": "three"}, files=class_images("green", 1))
    assert over.status_code == 403, over.text
    assert "quota of 2 classes" in over.json()["detail"]
    assert "TENANT_MAX_CLASSES" in over.json()["detail"]
    # Replacing one of its classes is not one more.
    replaced = acme.post(
        "/v1/classes", data={"name": "two", "replace": "true"}, files=class_images("green", 1)
    )
    assert replaced.status_code == 202, replaced.text
    ids[1] = replaced.json()["id"]
    # Another tenant has its own quota.
    globex = httpx.Client(base_url=quota_server.url, headers=_bearer(keys["globex"]), timeout=60)
    theirs = globex.post("/v1/classes", data={"name": "one"}, files=class_images("blue", 1))
    assert theirs.status_code == 202, theirs.text
    # Self-service: a client lists its own classes, cannot delete another tenant's, deletes
    # its own, and may register again.
    listed = acme.get("/v1/classes").json()
    assert sorted(item["id"] for item in listed["items"]) == sorted(ids)
    assert acme.delete(f"/v1/classes/{theirs.json()['id']}").status_code == 404
    assert acme.delete(f"/v1/classes/{ids[0]}").status_code == 204
    again = acme.post("/v1/classes", data={"name": "three"}, files=class_images("green", 1))
    assert again.status_code == 202, again.text


def test_a_browser_preflight_from_an_allowed_origin_is_answered(
    quota_server: LiveServer,
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    answer = httpx.options(
        f"{quota_server.url}/v1/classify", headers={"Origin": ORIGIN, **preflight}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    # The request itself: its answer may be read by the page, errors included.
    real = httpx.get(
        f"{quota_server.url}/v1/models",
        headers={"Origin": ORIGIN, **_bearer(quota_server.client_key)},
    )
    assert real.status_code == 200 and real.headers["access-control-allow-origin"] == ORIGIN
    assert "location" in real.headers["access-control-expose-headers"].lower()
    denied = httpx.get(f"{quota_server.url}/v1/models", headers={"Origin": ORIGIN})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
    # Another origin is not allowed.
    stranger = httpx.options(
        f"{quota_server.url}/v1/classify",
        headers={"Origin": "https://evil.example.net", **preflight},
    )
    assert stranger.status_code == 400
    assert "access-control-allow-origin" not in stranger.headers
