"""Tenants through real HTTP (`liteembed serve` processes), on SQLite and PostgreSQL: each client
key sees only its tenant's classes on every route; admin keys see all; keys issued and revoked
through the API take effect on every API process within a second."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.databases import truncate_postgres
from tests.helpers.images import COLOURS, class_images, image_bytes
from tests.helpers.live_server import LiveServer, running_server

# Each tenant registers a class of the same name, of a colour the tiny model tells apart.
TENANT_COLOURS = {"acme": "green", "globex": "magenta"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("postgres_database")
    truncate_postgres(url)
    return url


@pytest.fixture
def start_server(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, server_database: str
) -> Iterator[Callable[[], LiveServer]]:
    """API processes on one shared database (each with its embedded worker)."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start() -> LiveServer:
            workdir = tmp_path_factory.mktemp("tenant-server")
            env = {"LITEEMBED_DATABASE_URL": server_database}
            return stack.enter_context(running_server(workdir, cache_dir, env=env))

        yield start


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Tenant:
    name: str
    http: httpx.Client
    class_id: str = ""


def issue_key(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = admin.post("/v1/keys", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def classify(
    http: httpx.Client, colour: str, tenant: str | None = None, **data: Any
) -> httpx.Response:
    image = image_bytes(COLOURS[colour], seed=4242)
    return http.post(
        "/v1/classify",
        params={"tenant": tenant} if tenant else {},
        files={"image": ("q.png", image, "image/png")},
        data=data,
    )


def test_every_route_keeps_tenants_apart(start_server: Callable[[], LiveServer]) -> None:
    server = start_server()
    admin = httpx.Client(base_url=server.url, headers=bearer(server.admin_key), timeout=60)
    tenants = {
        name: Tenant(
            name,
            httpx.Client(
                base_url=server.url,
                headers=bearer(issue_key(admin, role="client", tenant=name)["key"]),
                timeout=60,
            ),
        )
        for name in TENANT_COLOURS
    }
    # The same name in two tenants: two classes, no conflict.
    for tenant in tenants.values():
        answer = tenant.http.post(
            "/v1/classes",
            data={"name": "widget"},
            files=class_images(TENANT_COLOURS[tenant.name]),
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["tenant"] == tenant.name
        tenant.class_id = answer.json()["id"]
    for tenant in tenants.values():
        eventually(
            lambda t=tenant: t.http.get(f"/v1/classes/{t.class_id}").json()["status"] == "ready"
        )

    acme, globex = tenants["acme"], tenants["globex"]
    for me, other in ((acme, globex), (globex, acme)):
        # Reads of one's own class work; the other tenant's id is a 404 like an unknown id.
        for suffix in ("", "/embedding", "/thumbnail"):
            assert me.http.get(f"/v1/classes/{me.class_id}{suffix}").status_code == 200
            hidden = me.http.get(f"/v1/classes/{other.class_id}{suffix}")
            assert hidden.status_code == 404, hidden.text
            assert hidden.json()["detail"] == f"no class with id {other.class_id}"
        # A client key lists its own tenant's classes, and only those; it cannot delete another
        # tenant's (a 404, like an unknown id). Key management stays an admin's.
        own = me.http.get("/v1/classes").json()
        assert [item["id"] for item in own["items"]] == [me.class_id] and own["total"] == 1
        assert me.http.get("/v1/classes", params={"tenant": other.name}).status_code == 403
        assert me.http.delete(f"/v1/classes/{other.class_id}").status_code == 404
        assert me.http.get("/v1/keys").status_code == 403
        assert me.http.post("/v1/keys", json={"role": "admin"}).status_code == 403
        elsewhere = me.http.post(
            "/v1/classes",
            params={"tenant": other.name},
            data={"name": "intruder"},
            files=class_images("blue", 1),
        )
        assert elsewhere.status_code == 403, elsewhere.text
        assert classify(me.http, "blue", tenant=other.name).status_code == 403

        # /classify without labels scores only the caller's classes...
        def only_own(me: Tenant = me) -> bool:
            predictions = classify(me.http, "blue").json()["predictions"]
            return [p["class_id"] for p in predictions] == [me.class_id]

        eventually(only_own, timeout=10)
        # ...and a registered name resolves within the caller's tenant.
        labelled = classify(me.http, "blue", labels=["widget", "banana"]).json()["predictions"]
        assert {p["label"]: p["class_id"] for p in labelled}["widget"] == me.class_id
        # The JSON and batch forms take the same path.
        image = base64.b64encode(image_bytes(COLOURS["blue"], seed=4242)).decode()
        batch = me.http.post("/v1/classify:json", json={"images": [image, image]}).json()
        assert [[p["class_id"] for p in r["predictions"]] for r in batch["results"]] == [
            [me.class_id],
            [me.class_id],
        ]
        registered = me.http.post(
            "/v1/classes:json", json={"name": "extra", "images": [image]}
        ).json()
        assert registered["tenant"] == me.name
        assert other.http.get(f"/v1/classes/{registered['id']}").status_code == 404
        assert admin.delete(f"/v1/classes/{registered['id']}").status_code == 204

    # A `{name}` in an embeddings prompt is the caller's tenant's class: same name, own word.
    prompt = {"texts": ["a sketch of a {widget}"]}
    eventually(lambda: acme.http.post("/v1/embeddings", json=prompt).status_code == 200)
    words = {
        t.name: t.http.post("/v1/embeddings", json=prompt).json()["texts"][0]
        for t in (acme, globex)
    }
    assert words["acme"] != words["globex"]
    default_only = httpx.Client(base_url=server.url, headers=bearer(server.client_key), timeout=60)
    unknown = default_only.post("/v1/embeddings", json=prompt)
    assert unknown.status_code == 422 and "widget" in unknown.json()["detail"]
    acme_as_admin = admin.post("/v1/embeddings", params={"tenant": "acme"}, json=prompt).json()
    assert acme_as_admin["texts"][0] == words["acme"]

    # Admins see every tenant, and filter by one.
    listed = admin.get("/v1/classes").json()
    assert {item["id"] for item in listed["items"]} == {acme.class_id, globex.class_id}
    only = admin.get("/v1/classes", params={"tenant": "acme"}).json()
    assert [item["id"] for item in only["items"]] == [acme.class_id] and only["total"] == 1
    for tenant in tenants.values():
        assert admin.get(f"/v1/classes/{tenant.class_id}/embedding").status_code == 200
    scored = {p["class_id"] for p in classify(admin, "blue", top_k=5).json()["predictions"]}
    assert scored == {acme.class_id, globex.class_id}
    acme_only = classify(admin, "blue", top_k=5, tenant="acme").json()["predictions"]
    assert [p["class_id"] for p in acme_only] == [acme.class_id]

    # An admin deletes in one tenant; the other tenant's class of the same name stays.
    assert admin.delete(f"/v1/classes/{acme.class_id}").status_code == 204
    assert acme.http.get(f"/v1/classes/{acme.class_id}").status_code == 404
    assert globex.http.get(f"/v1/classes/{globex.class_id}").status_code == 200
    eventually(lambda: classify(acme.http, "blue").json()["predictions"] == [], timeout=10)

    # The environment's client key is a client of the default tenant: it sees neither.
    default = httpx.Client(base_url=server.url, headers=bearer(server.client_key), timeout=60)
    assert default.get(f"/v1/classes/{globex.class_id}").status_code == 404
    assert classify(default, "blue").json()["predictions"] == []


def test_keys_are_issued_and_revoked_across_api_processes(
    start_server: Callable[[], LiveServer],
) -> None:
    first, second = start_server(), start_server()
    admin_first = httpx.Client(base_url=first.url, headers=bearer(first.admin_key), timeout=60)
    admin_second = httpx.Client(base_url=second.url, headers=bearer(second.admin_key), timeout=60)

    issued = issue_key(admin_first, role="client", tenant="acme")
    secret = issued["key"]
    assert issued["prefix"] == secret[: len(issued["prefix"])] and len(secret) >= 40
    # A key issued on one process works on the other at once (nothing to restart).
    on_second = httpx.Client(base_url=second.url, headers=bearer(secret), timeout=60)
    assert on_second.get("/v1/classes/unknown-id").status_code == 404
    answer = on_second.post("/v1/classes", data={"name": "gadget"}, files=class_images("blue", 1))
    assert answer.status_code == 202 and answer.json()["tenant"] == "acme", answer.text

    # Listed with its prefix, tenant and role, never its secret; last use recorded.
    listed = admin_second.get("/v1/keys", params={"tenant": "acme"}).json()["items"]
    assert [(k["id"], k["prefix"], k["role"]) for k in listed] == [
        (issued["id"], issued["prefix"], "client")
    ]
    assert listed[0]["last_used_at"] is not None and "key" not in listed[0]
    assert secret not in admin_second.get("/v1/keys").text

    # An issued admin key acts on every tenant.
    admin_key = issue_key(admin_second, role="admin")["key"]
    issued_admin = httpx.Client(base_url=first.url, headers=bearer(admin_key), timeout=60)
    assert issued_admin.get("/v1/classes").json()["total"] == 1

    # Revoked on the first process: refused by both within a second.
    assert admin_first.delete(f"/v1/keys/{issued['id']}").status_code == 204
    time.sleep(1.0)
    assert on_second.get("/v1/classes/unknown-id").status_code == 401
    on_first = httpx.Client(base_url=first.url, headers=bearer(secret), timeout=60)
    assert on_first.get("/v1/classes/unknown-id").status_code == 401
    assert admin_first.get("/v1/keys").json()["items"][0]["role"] == "admin"  # revoked hidden
    revoked = admin_first.get("/v1/keys", params={"revoked": "true"}).json()["items"]
    assert any(k["id"] == issued["id"] and k["revoked_at"] for k in revoked)
    # The class registered with the revoked key stays, in its tenant.
    assert admin_first.get("/v1/classes", params={"tenant": "acme"}).json()["total"] == 1

    # Bad requests are clear 4xx and change nothing.
    assert admin_first.post("/v1/keys", json={"role": "client"}).status_code == 422
    assert admin_first.post("/v1/keys", json={"role": "admin", "tenant": "x"}).status_code == 422
    assert admin_first.post("/v1/keys", json={"role": "client", "tenant": "A B"}).status_code == 422
    assert admin_first.delete("/v1/keys/unknown").status_code == 404
    assert len(admin_first.get("/v1/keys").json()["items"]) == 1
