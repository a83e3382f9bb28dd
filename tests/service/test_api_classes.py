"""Register -> train (embedded worker) -> read, list, export, classify, delete; on SQLite and
PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tests.helpers.images import COLOURS


def register(client: Any, name: str, files: list[Any], **data: Any) -> Any:
    return client.post("/v1/classes", data={"name": name, **data}, files=files)


def test_register_train_read_list_export_delete(
    client: Any, make_class_images: Any, make_image: Any, wait_status: Any
) -> None:
    response = register(client, "green thing", make_class_images("green"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] in ("queued", "training", "ready")
    assert response.headers["location"] == f"/v1/classes/{body['id']}"
    class_id = body["id"]

    ready = wait_status(client, class_id, {"ready", "failed"})
    assert ready["status"] == "ready", ready
    assert ready["progress"] == 1.0 and ready["error"] is None and ready["attempts"] == 1
    assert ready["model"] == "liteembed-tiny@random-0"

    exported = client.get(f"/v1/classes/{class_id}/embedding").json()
    assert exported["model"] == ready["model"]
    assert exported["dim"] == len(exported["text_feature"]) == 32
    assert len(exported["token_embedding"]) > 0 and exported["templates"]
    assert abs(np.linalg.norm(exported["text_feature"]) - 1.0) < 1e-3

    listed = client.get("/v1/classes").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == class_id
    assert client.get("/v1/classes", params={"status": "queued"}).json() == {
        "items": [],
        "total": 0,
    }

    assert client.delete(f"/v1/classes/{class_id}").status_code == 204
    assert client.get(f"/v1/classes/{class_id}").status_code == 404
    assert client.get(f"/v1/classes/{class_id}/embedding").status_code == 404
    assert client.delete(f"/v1/classes/{class_id}").status_code == 404
    image = make_image((20, 140, 40), seed=99)
    predictions = client.post(
        "/v1/classify", files={"image": ("x.png", image, "image/png")}
    ).json()["predictions"]
    assert predictions == []


def test_classify_puts_the_right_class_first(
    client: Any, make_class_images: Any, make_image: Any, wait_status: Any
) -> None:
    # Made-up names: a new class is a word CLIP does not know (real colour words would start
    # from the random model's own, arbitrary, idea of them).
    # Two classes: the random-weight tiny model cannot reliably tell three colours apart.
    names = {"green": "zorb", "magenta": "plax"}
    ids = {}
    for colour, name in names.items():
        response = register(client, name, make_class_images(colour))
        assert response.status_code == 202, response.text
        ids[colour] = response.json()["id"]
    for class_id in ids.values():
        assert wait_status(client, class_id, {"ready", "failed"})["status"] == "ready"

    # /classify sees new classes within classifier_refresh_seconds (0.2 s here).
    deadline = time.monotonic() + 10
    query = {"image": ("q.png", make_image(COLOURS["green"], seed=7), "image/png")}
    while len(client.post("/v1/classify", files=query).json()["predictions"]) < len(ids):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for colour, class_id in ids.items():
        held_out = make_image(COLOURS[colour], seed=1000)
        response = client.post(
            "/v1/classify", files={"image": ("q.png", held_out, "image/png")}, data={"top_k": 2}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        top = body["predictions"][0]
        assert (top["label"], top["class_id"]) == (names[colour], class_id), body
        scores = [p["score"] for p in body["predictions"]]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4

    # Labels mix a registered class (its own feature, its id) and plain words (CLIP's, no id).
    held_out = make_image(COLOURS["magenta"], seed=2000)
    response = client.post(
        "/v1/classify",
        files={"image": ("q.png", held_out, "image/png")},
        data={"labels": ["plax", "banana", "car"], "top_k": 3},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert len(body["predictions"]) == 3
    by_label = {p["label"]: p for p in body["predictions"]}
    assert by_label["plax"]["class_id"] == ids["magenta"]
    for p in body["predictions"]:
        if p["label"] != "plax":
            assert p["class_id"] is None


def test_duplicate_name_conflicts_unless_replace(
    client: Any, make_class_images: Any, wait_status: Any
) -> None:
    first = register(client, "Blue", make_class_images("blue", 2)).json()
    wait_status(client, first["id"], {"ready"})
    clash = register(client, "blue", make_class_images("blue", 2))
    assert clash.status_code == 409 and "already exists" in clash.json()["detail"]

    replaced = register(client, "blue", make_class_images("blue", 3), replace="true")
    assert replaced.status_code == 202, replaced.text
    new_id = replaced.json()["id"]
    assert new_id != first["id"]
    assert client.get(f"/v1/classes/{first['id']}").status_code == 404
    assert wait_status(client, new_id, {"ready", "failed"})["status"] == "ready"
    assert client.get("/v1/classes").json()["total"] == 1


def test_list_paginates_and_filters(client: Any, make_class_images: Any, wait_status: Any) -> None:
    ids = [register(client, f"c{i}", make_class_images("yellow", 1)).json()["id"] for i in range(3)]
    for class_id in ids:
        wait_status(client, class_id, {"ready"})
    page = client.get("/v1/classes", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 3 and [c["id"] for c in page["items"]] == ids[1:]
    assert client.get("/v1/classes", params={"status": "ready"}).json()["total"] == 3
    assert client.get("/v1/classes", params={"status": "bogus"}).status_code == 422
    assert client.get("/v1/classes", params={"limit": 0}).status_code == 422


def test_embedding_is_409_until_ready(client: Any, make_class_images: Any, settings: Any) -> None:
    from service.db import make_engine, make_session_factory
    from service.models import ClassImage, PersonalizedClass

    # A row that no worker will pick up (never sent): it stays queued.
    factory = make_session_factory(make_engine(settings.database_url))
    with factory() as session:
        row = PersonalizedClass(
            name="pending",
            name_key="pending",
            model_id="liteembed-tiny@random-0",
            hints=[],
            confusers=[],
        )
        row.images = [ClassImage(position=0, data=b"x")]
        session.add(row)
        session.commit()
        class_id = row.id
    response = client.get(f"/v1/classes/{class_id}/embedding")
    assert response.status_code == 409 and "not ready" in response.json()["detail"]
