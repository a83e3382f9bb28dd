"""The engine's defaults, as a new user meets them: on the random-weight tiny model (whose
defaults were never tuned), four visually distinct classes registered through the API from five
images each; every class's own images must come back as that class."""

from __future__ import annotations

import time
from typing import Any

# Far apart for the random-weight tiny model's image encoder.
CLASSES = {
    "zorb": (20, 140, 40),
    "quil": (240, 220, 30),
    "plax": (220, 30, 220),
    "drem": (20, 30, 160),
}
IMAGES = 5


def test_own_exemplars_come_back_as_their_class_with_default_settings(
    sqlite_url: str, make_settings: Any, make_client: Any, make_image: Any, wait_status: Any
) -> None:
    # No step budget from the service: the engine's own rule picks it.
    client = make_client(make_settings(sqlite_url, train_steps=None))
    ids = {}
    for name, colour in CLASSES.items():
        files = [
            ("images", (f"{name}{i}.png", make_image(colour, seed=i), "image/png"))
            for i in range(IMAGES)
        ]
        response = client.post("/v1/classes", data={"name": name}, files=files)
        assert response.status_code == 202, response.text
        ids[name] = response.json()["id"]
    for class_id in ids.values():
        body = wait_status(client, class_id, {"ready", "failed"}, timeout=300)
        assert body["status"] == "ready", body
    deadline = time.monotonic() + 10
    probe = {"image": ("q.png", make_image(CLASSES["zorb"], seed=0), "image/png")}
    while len(client.post("/v1/classify", files=probe).json()["predictions"]) < len(CLASSES):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    wrong = []
    for name, colour in CLASSES.items():
        for i in range(IMAGES):
            image = {"image": ("q.png", make_image(colour, seed=i), "image/png")}
            top = client.post("/v1/classify", files=image).json()["predictions"][0]
            if (top["label"], top["class_id"]) != (name, ids[name]):
                wrong.append((name, i, top["label"]))
    assert wrong == []
