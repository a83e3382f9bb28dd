"""One name rule through the API: names that look the same are one class, kept as given; and
concurrent replacements of one name all succeed, the last one winning."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.helpers.images import COLOURS
from tests.service.test_api_classes import register


def test_compatibility_forms_are_the_same_class(
    client: Any, make_class_images: Any, make_image: Any, wait_status: Any
) -> None:
    first = register(client, "ＡＢＣ１", make_class_images("blue", 2))
    assert first.status_code == 202, first.text
    assert first.json()["name"] == "ＡＢＣ１"  # returned as given

    clash = register(client, "abc1", make_class_images("blue", 2))
    assert clash.status_code == 409, clash.text
    assert "ＡＢＣ１" in clash.json()["detail"]

    class_id = first.json()["id"]
    assert wait_status(client, class_id, {"ready", "failed"})["status"] == "ready"
    # A label in another form finds the class (once this process's class matrix has it).
    deadline = time.monotonic() + 10
    while True:
        body = client.post(
            "/v1/classify",
            data={"labels": ["Abc1", "red"]},
            files=[("image", ("q.png", make_image(COLOURS["blue"]), "image/png"))],
        ).json()
        by_label = {p["label"]: p for p in body["predictions"]}
        if by_label["Abc1"]["class_id"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert by_label["Abc1"]["class_id"] == class_id


def test_concurrent_replacements_all_succeed_and_the_last_wins(
    client: Any, make_class_images: Any
) -> None:
    files = make_class_images("green", 1)
    assert register(client, "race", files).status_code == 202

    def replace(_: int) -> Any:
        return register(client, "race", files, replace="true")

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(replace, range(20)))
    assert [a.status_code for a in answers] == [202] * 20, [a.text for a in answers]

    listed = client.get("/v1/classes", params={"limit": 100}).json()
    assert listed["total"] == 1, listed
    survivor = listed["items"][0]["id"]
    assert survivor in {a.json()["id"] for a in answers}
    # Every other replacement is gone, not left behind half-written.
    gone = [a.json()["id"] for a in answers if a.json()["id"] != survivor]
    assert all(client.get(f"/v1/classes/{i}").status_code == 404 for i in gone)
