"""Known concepts as competitors, through the API: a registered class's prediction for an image of
a concept the model knows (a reference bank word nearer to the image than the class) is answered
with `accepted: false` and the concept in `nearer_known`; the prediction itself stays. An image
of the class is still accepted, a plain-word label never competes, and with the rule off (no
margin, or switched off) nothing changes."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

import service.runtime
from liteembed.background import Background
from service.core.config import Settings
from service.runtime import Runtime, RuntimeHolder
from tests.helpers.images import COLOURS, class_images, image_bytes

# The known concept: the tiny random model has none, so the bank's word "ball" is given the
# features of yellow images (as a real model's word lies near its images).
CONCEPT = "ball"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def start(
    shared_runtime: RuntimeHolder,
    make_client: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Settings, Background], Any]:
    """An app whose runtime is the shared one with `background` as its known concepts."""

    def make(settings: Settings, background: Background) -> Any:
        held: Runtime = replace(shared_runtime.get(), background=background)
        monkeypatch.setattr(service.runtime, "load_runtime", lambda *_, **__: held)
        holder = RuntimeHolder(settings)
        holder.get()
        return make_client(settings, runtime=holder)

    return make


def concept_of(client: Any, colour: str) -> Background:
    """The word CONCEPT as the mean feature of four images of `colour` (seeds no test sends)."""
    images = [b64(image_bytes(COLOURS[colour], seed=100 + i)) for i in range(4)]
    response = client.post("/v1/embeddings", json={"images": images})
    assert response.status_code == 200, response.text
    mean = torch.tensor(np.array(response.json()["images"]), dtype=torch.float32).mean(dim=0)
    return Background(words=[CONCEPT], features=torch.nn.functional.normalize(mean, dim=0)[None])


def classify(client: Any, colour: str, **data: Any) -> list[dict[str, Any]]:
    files = {"image": ("q.png", image_bytes(COLOURS[colour], seed=3), "image/png")}
    response = client.post("/v1/classify", files=files, data=data)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def test_an_image_of_a_known_concept_is_not_accepted_as_the_class(
    sqlite_url: str, make_settings: Callable[..., Settings], start: Any, wait_status: Any
) -> None:
    # A class learned from yellow images: a yellow image is its, and also the concept's.
    off = start(make_settings(sqlite_url), Background(words=[], features=torch.zeros(0, 1)))
    created = off.post("/v1/classes", data={"name": "zorb"}, files=class_images("yellow"))
    assert wait_status(off, created.json()["id"], {"ready", "failed"})["status"] == "ready"
    ball, other = concept_of(off, "yellow"), concept_of(off, "blue")

    # Without a margin (the tiny model has none recorded) the rule is off: accepted as before.
    rule_off = start(make_settings(sqlite_url), ball)
    (top,) = classify(rule_off, "yellow")
    assert top["label"] == "zorb" and top["accepted"] is True and top["nearer_known"] is None
    switched = start(
        make_settings(sqlite_url, background_margin=0.0, background_competitors=False), ball
    )
    assert classify(switched, "yellow")[0]["accepted"] is True

    # On: the concept is nearer to its own image than the class learned from four shots is.
    client = start(make_settings(sqlite_url, background_margin=0.0), ball)
    (top,) = classify(client, "yellow")
    assert top["label"] == "zorb" and top["class_id"] == created.json()["id"]
    assert top["accepted"] is False and top["nearer_known"] == CONCEPT
    assert classify(client, "yellow", abstain="true") == []
    # A margin wider than the concept's lead gives the class back.
    wide = start(make_settings(sqlite_url, background_margin=1.0), ball)
    assert classify(wide, "yellow")[0]["accepted"] is True

    # Among labels: the registered class competes, the plain word does not.
    by_label = {
        p["label"]: p for p in classify(client, "yellow", labels=["zorb", "car"], top_k="2")
    }
    assert by_label["zorb"]["accepted"] is False and by_label["zorb"]["nearer_known"] == CONCEPT
    assert by_label["car"]["nearer_known"] is None

    # A concept far from the image does not beat the class.
    elsewhere = start(make_settings(sqlite_url, background_margin=0.0), other)
    (top,) = classify(elsewhere, "yellow")
    assert top["accepted"] is True and top["nearer_known"] is None
