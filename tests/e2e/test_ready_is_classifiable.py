"""`ready` means classifiable, across API processes: two real `liteembed serve` processes share
one database (SQLite file, or PostgreSQL); a class registered on A and seen `ready` there is
scored by a /classify on B that starts right after, and a class deleted on A (204) is no longer
scored by B.

Both processes refresh their class matrix in the background only once a minute, so nothing but
/classify's own check of the database's generation can make B current: on code without that
check the first round fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.images import COLOURS, class_images, image_bytes
from tests.helpers.live_server import LiveServer, running_server

pytestmark = pytest.mark.slow

# Rounds per database: each one is register -> ready on A -> classify on B -> delete -> classify.
NAMES = ["zorb", "plax", "vorn"]
SLOW_REFRESH = {"LITEEMBED_CLASSIFIER_REFRESH_SECONDS": "60"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_servers(
    request: pytest.FixtureRequest, tmp_path: Path, cache_dir: Path
) -> Iterator[tuple[LiveServer, LiveServer]]:
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        from tests.helpers.databases import truncate_postgres

        database_url = request.getfixturevalue("postgres_database")
        truncate_postgres(database_url)
    env = SLOW_REFRESH | {"LITEEMBED_DATABASE_URL": database_url}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # One after the other: on SQLite each `serve` migrates the shared file as it starts.
    with (
        running_server(tmp_path / "a", cache_dir, env=env) as a,
        running_server(tmp_path / "b", cache_dir, env=env) as b,
    ):
        yield a, b


def _auth(server: LiveServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key}"}


def _classify(server: LiveServer, labels: list[str] | None = None) -> list[dict[str, Any]]:
    query = image_bytes(COLOURS["green"], seed=99)
    response = httpx.post(
        f"{server.url}/v1/classify",
        files={"image": ("q.png", query, "image/png")},
        data={"top_k": "1000", **({"labels": labels} if labels else {})},
        headers=_auth(server),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def _wait_ready(server: LiveServer, class_id: str, timeout: float = 180) -> None:
    """Poll until `ready`, as a client would; returns the moment the answer says so."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{server.url}/v1/classes/{class_id}", headers=_auth(server)).json()
        if body["status"] == "ready":
            return
        assert body["status"] in ("queued", "training"), body
        assert time.monotonic() < deadline, f"{body}\n{server.log()}"
        time.sleep(0.05)


def test_ready_on_one_process_is_classifiable_on_another(
    two_servers: tuple[LiveServer, LiveServer],
) -> None:
    a, b = two_servers
    assert _classify(b) == []  # B has built its (empty) matrix before anything is registered
    for name in NAMES:
        registered = httpx.post(
            f"{a.url}/v1/classes",
            data={"name": name},
            files=class_images("green"),
            headers=_auth(a),
        )
        assert registered.status_code == 202, registered.text
        class_id = registered.json()["id"]
        _wait_ready(a, class_id)

        # Immediately after A said ready: B scores it, with its id, both ways.
        scored = _classify(b)
        assert [p["class_id"] for p in scored] == [class_id], (name, scored)
        by_label = _classify(b, labels=[name, "dog"])
        assert {p["label"]: p["class_id"] for p in by_label} == {name: class_id, "dog": None}

        deleted = httpx.delete(f"{a.url}/v1/classes/{class_id}", headers=_auth(a))
        assert deleted.status_code == 204, deleted.text
        # Immediately after A's 204: B no longer scores it; its name is a plain word again.
        assert _classify(b) == [], name
        by_label = _classify(b, labels=[name])
        assert [(p["label"], p["class_id"]) for p in by_label] == [(name, None)]
