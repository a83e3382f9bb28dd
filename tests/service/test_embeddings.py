"""POST /v1/embeddings: image and text features in one space; a registered class's learned word
works in a prompt it was never trained with (plug-and-play)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from service.core.config import Settings
from tests.helpers.images import COLOURS, class_images, image_bytes

NAMES = {"green": "zorb", "magenta": "plax"}
# Not the template the words are learned with (checked below). The random-weight tiny model
# carries a learned word into prompts of a similar shape; a real CLIP carries it further.
NEW_TEMPLATES = ("a sketch of a {}.", "a picture of a {}.")


@pytest.fixture
def sqlite_client(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Callable[..., Any]
) -> Any:
    return make_client(make_settings(sqlite_url))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def embed(client: Any, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_learned_word_in_a_new_prompt_finds_its_class_images(
    sqlite_client: Any, wait_status: Any
) -> None:
    client = sqlite_client
    ids = {}
    for colour, name in NAMES.items():
        response = client.post("/v1/classes", data={"name": name}, files=class_images(colour))
        assert response.status_code == 202, response.text
        ids[colour] = response.json()["id"]
    for class_id in ids.values():
        assert wait_status(client, class_id, {"ready", "failed"})["status"] == "ready"
        templates = client.get(f"/v1/classes/{class_id}/embedding").json()["templates"]
        assert not set(NEW_TEMPLATES) & set(templates)

    held_out = {c: [image_bytes(COLOURS[c], seed=500 + i) for i in range(4)] for c in NAMES}
    images = held_out["green"] + held_out["magenta"]
    texts = [t.format("{" + name + "}") for t in NEW_TEMPLATES for name in NAMES.values()]
    body = embed(client, images=[b64(i) for i in images], texts=[*texts, "zorb", "a {{zorb}}"])

    assert body["model"] == "liteembed-tiny@random-0" and body["dim"] == 32
    image_features = np.array(body["images"])
    text_features = np.array(body["texts"])
    assert image_features.shape == (8, 32) and text_features.shape == (6, 32)
    assert np.allclose(np.linalg.norm(image_features, axis=1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(text_features, axis=1), 1, atol=1e-4)

    green, magenta = slice(0, 4), slice(4, 8)
    for t in range(len(NEW_TEMPLATES)):
        cosines = text_features[2 * t : 2 * t + 2] @ image_features.T  # (word, image)
        # Each learned word ranks every image of its own class above every image of the other.
        assert cosines[0, green].min() > cosines[0, magenta].max(), (t, cosines)
        assert cosines[1, magenta].min() > cosines[1, green].max(), (t, cosines)
    # The learned word is not the plain word: without braces "zorb" is CLIP's own text.
    assert not np.allclose(text_features[0], text_features[4])
    # `{{zorb}}` is the literal text "a {zorb}", not the learned word.
    literal = client.app.state.runtime.get().backend.encode_texts(["a {zorb}"]).numpy()[0]
    assert np.allclose(literal, text_features[5], atol=1e-5)

    # Images are the same features /classify scores: the same image answers the same way.
    again = np.array(embed(client, images=[b64(images[0])])["images"][0])
    assert np.allclose(again, image_features[0], atol=1e-4)


def test_plain_texts_are_clips_own_text_features(sqlite_client: Any) -> None:
    body = embed(sqlite_client, texts=["a photo of a dog", "a photo of a cat"])
    runtime = sqlite_client.app.state.runtime.get()
    expected = runtime.backend.encode_texts(["a photo of a dog", "a photo of a cat"]).numpy()
    assert np.allclose(np.array(body["texts"]), expected, atol=1e-5)
    assert body["images"] == []


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"texts": ["a photo of a {nobody}"]}, 422, "no class named 'nobody'"),
        ({"texts": ["a photo of a {zorb"]}, 422, "unmatched '{'"),
        ({"texts": ["a photo of a zorb}"]}, 422, "unmatched '}'"),
        ({"texts": ["a photo of a {}"]}, 422, "class name"),
        ({"texts": ["   "]}, 422, "must not be empty"),
        ({"texts": ["word " * 100]}, 422, "context"),
        ({"texts": ["x"] * 257}, 422, "at most 256 texts"),
        ({"images": [b64(b"x")] * 33}, 422, "at most 32 images"),
        ({"images": ["https://example.com/a.png"]}, 422, "URLs are not fetched"),
        ({"images": [b64(b"junk")]}, 400, "not a readable image"),
        ({}, 422, "at least one of"),
        ({"text": ["a"]}, 422, "text"),
    ],
    ids=[
        "unknown class",
        "open brace",
        "close brace",
        "empty name",
        "empty text",
        "too long",
        "too many texts",
        "too many images",
        "url",
        "undecodable",
        "nothing",
        "unknown field",
    ],
)
def test_bad_embeddings_requests(sqlite_client: Any, body: Any, status: int, fragment: str) -> None:
    response = sqlite_client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


def test_embeddings_take_json_only(sqlite_client: Any) -> None:
    response = sqlite_client.post("/v1/embeddings", data={"texts": "a"})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
