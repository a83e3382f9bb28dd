"""401/403 over every route: admin keys do everything, client keys what the README lists."""

from __future__ import annotations

import base64
from typing import Any

import pytest

ADMIN, CLIENT = "admin-key-1-0123456789", "client-key-1-0123456789"
PNG = b""  # replaced per test with a real image

ROUTES: list[tuple[str, str, str]] = [  # method, path, who may call it
    ("POST", "/v1/classes", "client"),
    ("GET", "/v1/classes/{id}", "client"),
    ("GET", "/v1/classes", "client"),
    ("GET", "/v1/classes/{id}/embedding", "client"),
    ("GET", "/v1/classes/{id}/thumbnail", "client"),
    ("POST", "/v1/classify", "client"),
    ("POST", "/v1/classes:json", "client"),
    ("POST", "/v1/classify:json", "client"),
    ("POST", "/v1/embeddings", "client"),
    ("GET", "/v1/models", "client"),
    ("GET", "/v1/classes/{id}/export", "client"),
    ("POST", "/v1/classes:import", "client"),
    ("GET", "/v1/vocabulary", "client"),
    ("DELETE", "/v1/classes/{id}", "client"),
    ("GET", "/v1/bank", "client"),
    ("DELETE", "/v1/bank", "client"),
]


@pytest.fixture
def secured(sqlite_url: str, make_settings: Any, make_client: Any) -> Any:
    settings = make_settings(
        sqlite_url, admin_keys=[ADMIN, "admin-key-2-0123456789"], client_keys=[CLIENT]
    )
    return make_client(settings)


def call(client: Any, method: str, path: str, key: str | None, image: bytes, class_id: str) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    path = path.replace("{id}", class_id)
    if path == "/v1/classes" and method == "POST":
        return client.post(
            "/v1/classes",
            data={"name": f"n{len(client.cookies)}-{method}-{key}"},
            files=[("images", ("a.png", image, "image/png"))],
            headers=headers,
        )
    if path == "/v1/classify":
        return client.post(path, files=[("image", ("a.png", image, "image/png"))], headers=headers)
    encoded = base64.b64encode(image).decode()
    if path == "/v1/classes:json":
        name = f"j{len(client.cookies)}-{key}"
        return client.post(path, json={"name": name, "images": [encoded]}, headers=headers)
    if path in ("/v1/classify:json", "/v1/embeddings"):
        return client.post(path, json={"images": [encoded]}, headers=headers)
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize(("method", "path", "who"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_auth_matrix(secured: Any, make_image: Any, method: str, path: str, who: str) -> None:
    image = make_image((20, 140, 40))
    made = secured.post(
        "/v1/classes",
        data={"name": "owned"},
        files=[("images", ("a.png", image, "image/png"))],
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert made.status_code == 202
    class_id = made.json()["id"]

    for key in (None, "wrong", f"{ADMIN}x", ADMIN[:-1]):
        response = call(secured, method, path, key, image, class_id)
        assert response.status_code == 401, (key, response.text)
        assert response.headers.get("www-authenticate") == "Bearer"
    bad_scheme = secured.request(
        method, path.replace("{id}", class_id), headers={"Authorization": f"Basic {ADMIN}"}
    )
    assert bad_scheme.status_code == 401

    client_response = call(secured, method, path, CLIENT, image, class_id)
    if who == "admin":
        assert client_response.status_code == 403, client_response.text
    else:
        assert client_response.status_code not in (401, 403), client_response.text
    admin_response = call(secured, method, path, "admin-key-2-0123456789", image, class_id)
    assert admin_response.status_code not in (401, 403), admin_response.text


def test_open_routes_need_no_key(secured: Any) -> None:
    # /admin is a static page: it shows nothing until the browser sends an admin key.
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/admin"):
        assert secured.get(path).status_code == 200, path
