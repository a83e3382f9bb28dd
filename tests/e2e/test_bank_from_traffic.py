"""The reference bank grown from traffic, through a real `liteembed serve` process (tiny model,
SQLite, embedded worker): an opted-in tenant's confident plain-word answers are kept, a class
registered afterwards is trained against those words' recorded images, and DELETE /v1/bank
removes them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.images import COLOURS, class_images, image_bytes
from tests.helpers.live_server import running_server

pytestmark = pytest.mark.slow


def _ready(http: httpx.Client, class_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        body: dict[str, Any] = http.get(f"/v1/classes/{class_id}").json()
        if body["status"] in ("ready", "failed"):
            assert body["status"] == "ready", body
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def _register(http: httpx.Client, name: str) -> dict[str, Any]:
    made = http.post("/v1/classes", data={"name": name}, files=class_images("green"))
    assert made.status_code == 202, made.text
    return _ready(http, made.json()["id"])


def _bank_groups(diagnostics: dict[str, Any]) -> dict[str, int]:
    groups = diagnostics.get("evidence", {}).get("groups", [])
    return {g["name"]: g["images"] for g in groups if g["source"] == "bank"}


def _counts(http: httpx.Client) -> dict[str, int]:
    answer = http.get("/v1/bank")
    assert answer.status_code == 200, answer.text
    return {item["word"]: item["features"] for item in answer.json()["items"]}


def test_recorded_traffic_trains_the_next_class_and_is_deleted(
    tmp_path: Path, cache_dir: Path
) -> None:
    env = {"LITEEMBED_BANK_FROM_TRAFFIC_TENANTS": "default"}
    with (
        running_server(tmp_path, cache_dir, env=env) as server,
        httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {server.client_key}"},
            timeout=120,
        ) as http,
    ):
        first = _register(http, "zorblat")
        # The tiny model has no bank of its own: no bank images yet.
        assert _bank_groups(first["diagnostics"]) == {}
        mined = [
            n["name"] for n in first["diagnostics"]["negatives"] if n["source"] == "vocabulary"
        ]

        # Green images labelled with each of the words the green class is mined against: one
        # label, so a softmax score of 1; kept where the word's threshold accepts the image.
        accepted: dict[str, int] = {}
        for word in mined[:3]:
            for seed in range(2):
                image = image_bytes(COLOURS["green"], seed=100 + seed)
                answer = http.post(
                    "/v1/classify",
                    files=[("image", ("g.png", image, "image/png"))],
                    data={"labels": [word]},
                )
                assert answer.status_code == 200, answer.text
                if answer.json()["predictions"][0]["accepted"]:
                    accepted[word] = accepted.get(word, 0) + 1
        assert accepted, "no mined word accepted a green image"

        deadline = time.monotonic() + 30
        while _counts(http) != accepted:
            assert time.monotonic() < deadline, (_counts(http), accepted, server.log())
            time.sleep(0.1)

        # Same images, another name: mined against the same words, now with their images.
        second = _register(http, "quibble")
        assert _bank_groups(second["diagnostics"]) == accepted, second["diagnostics"]

        deleted = http.delete("/v1/bank")
        assert deleted.status_code == 200 and deleted.json() == {"deleted": sum(accepted.values())}
        assert _counts(http) == {}
