"""/classify scores exactly the classes the database holds when the request starts: a class
this process's embedded worker just marked `ready` is scored at once, a deleted one no longer is.
(Across API processes: tests/e2e/test_ready_is_classifiable.py.)"""

from __future__ import annotations

from typing import Any

from tests.helpers.images import COLOURS


def _classify(client: Any, make_image: Any, **data: Any) -> Any:
    query = {"image": ("q.png", make_image(COLOURS["green"], seed=7), "image/png")}
    return client.post("/v1/classify", files=query, data={"top_k": 100, **data})


def test_a_class_is_classifiable_as_soon_as_it_is_ready(
    database_url: str,
    make_settings: Any,
    make_client: Any,
    make_class_images: Any,
    make_image: Any,
    wait_status: Any,
) -> None:
    # The refresher thread would take a minute: only the request's own check can be in time.
    client = make_client(make_settings(database_url, classifier_refresh_seconds=60))
    for name in ("zorb", "plax"):
        response = client.post("/v1/classes", data={"name": name}, files=make_class_images("green"))
        assert response.status_code == 202, response.text
        class_id = response.json()["id"]
        assert wait_status(client, class_id, {"ready", "failed"})["status"] == "ready"

        scored = _classify(client, make_image).json()["predictions"]
        assert [p["class_id"] for p in scored] == [class_id]
        by_label = _classify(client, make_image, labels=[name]).json()["predictions"]
        assert [(p["label"], p["class_id"]) for p in by_label] == [(name, class_id)]

        assert client.delete(f"/v1/classes/{class_id}").status_code == 204
        assert _classify(client, make_image).json()["predictions"] == []
