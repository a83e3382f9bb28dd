"""Answers a client can trust, through the API: negative images at registration (multipart and
JSON, checked like the images), a ready class's threshold and impact, and every prediction's
`similarity` and `accepted`, with `abstain` leaving out what is not accepted."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.helpers.images import COLOURS, class_images, image_bytes


def negatives(colour: str, count: int = 2) -> list[tuple[str, Any]]:
    return [
        ("negative_images", (f"n{i}.png", image_bytes(COLOURS[colour], seed=50 + i), "image/png"))
        for i in range(count)
    ]


def stored_negatives(url: str, class_id: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM class_negative_images WHERE class_id = :id"),
            {"id": class_id},
        ).scalar()
    engine.dispose()
    return int(count or 0)


def test_negative_images_are_stored_and_a_ready_class_says_its_threshold_and_impact(
    client: Any, settings: Any, wait_status: Any
) -> None:
    files = class_images("green") + negatives("yellow")
    response = client.post("/v1/classes", data={"name": "zorb"}, files=files)
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["impact"] == [] and queued["threshold"] is None
    ready = wait_status(client, queued["id"], {"ready", "failed"})
    assert ready["status"] == "ready", ready
    assert isinstance(ready["threshold"], float) and ready["impact"] == []
    assert stored_negatives(settings.database_url, queued["id"]) == 2
    exported = client.get(f"/v1/classes/{queued['id']}/embedding").json()
    assert exported["threshold"] == ready["threshold"]

    b64 = [base64.b64encode(image_bytes(COLOURS["magenta"], seed=i)).decode() for i in range(3)]
    as_json = client.post(
        "/v1/classes",
        json={"name": "plax", "images": b64, "negative_images": b64[:1]},
    )
    assert as_json.status_code == 202, as_json.text
    assert stored_negatives(settings.database_url, as_json.json()["id"]) == 1


@pytest.mark.parametrize(
    ("extra", "status", "detail"),
    [
        (negatives("yellow", 9), 422, "at most 8 negative_images"),
        ([("negative_images", ("n.png", b"not an image", "image/png"))], 400, "negative_images[0]"),
        ([("negative_images", ("n.txt", b"hello", "text/plain"))], 415, "negative_images[0]"),
    ],
)
def test_bad_negative_images_are_refused_and_change_nothing(
    client: Any, settings: Any, db_snapshot: Any, extra: list[Any], status: int, detail: str
) -> None:
    before = db_snapshot(settings.database_url)
    files = class_images("green") + extra
    response = client.post("/v1/classes", data={"name": "zorb"}, files=files)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert db_snapshot(settings.database_url) == before


def test_predictions_carry_similarity_and_accepted_and_abstain_leaves_out_the_rest(
    client: Any, wait_status: Any
) -> None:
    response = client.post("/v1/classes", data={"name": "zorb"}, files=class_images("green"))
    ready = wait_status(client, response.json()["id"], {"ready", "failed"})
    threshold = ready["threshold"]
    own = {"image": ("q.png", image_bytes(COLOURS["green"], seed=2), "image/png")}
    (top,) = client.post("/v1/classify", files=own).json()["predictions"]
    assert top["label"] == "zorb" and top["accepted"] is (top["similarity"] >= threshold)

    # Labels: the class's own threshold, and the model's plain-word threshold for a word.
    labelled = client.post(
        "/v1/classify", files=own, data={"labels": ["zorb", "car"], "top_k": "2"}
    ).json()["predictions"]
    by_label = {p["label"]: p for p in labelled}
    assert by_label["zorb"]["similarity"] == pytest.approx(top["similarity"], abs=1e-5)
    assert by_label["zorb"]["accepted"] is top["accepted"]
    assert by_label["car"]["class_id"] is None and isinstance(by_label["car"]["accepted"], bool)

    # abstain drops exactly the predictions that are not accepted, in every body shape.
    images = [image_bytes(COLOURS[c], seed=9) for c in ("green", "yellow", "blue")]
    data = {"labels": ["zorb", "car", "dog"], "top_k": "3"}
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    full = client.post("/v1/classify", files=files, data=data).json()["results"]
    kept = client.post("/v1/classify", files=files, data={**data, "abstain": "true"}).json()
    as_json = client.post(
        "/v1/classify:json",
        json={
            "images": [base64.b64encode(b).decode() for b in images],
            "labels": data["labels"],
            "top_k": 3,
            "abstain": True,
        },
    ).json()
    for answers in (kept["results"], as_json["results"]):
        assert [[p["label"] for p in r["predictions"]] for r in answers] == [
            [p["label"] for p in r["predictions"] if p["accepted"]] for r in full
        ]
        assert all(p["accepted"] for r in answers for p in r["predictions"])
    single = client.post(
        "/v1/classify", files={"image": files[0][1]}, data={**data, "abstain": "true"}
    ).json()
    # The same answer alone as in the batch, up to float rounding (a batch of several images is
    # encoded as one model batch, whose float32 kernels may round the last bit differently).
    alone, batched = single["predictions"], kept["results"][0]["predictions"]
    assert [(p["label"], p["class_id"], p["accepted"]) for p in alone] == [
        (p["label"], p["class_id"], p["accepted"]) for p in batched
    ]
    for key in ("score", "similarity"):
        assert [p[key] for p in alone] == pytest.approx([p[key] for p in batched], abs=1e-5)
