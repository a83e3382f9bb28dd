"""The OpenAI door: the official `openai` client against a real `liteembed serve` lists the
model and embeds texts (a learned `{name}` word included) and images (data URIs), as floats
and as base64, agreeing with the service's own `/v1/embeddings` answer."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.helpers.api import wait_for_status
from tests.helpers.images import COLOURS, class_images, image_bytes
from tests.helpers.live_server import LiveServer, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[LiveServer]:
    with running_server(tmp_path_factory.mktemp("openai"), cache_dir) as live:
        yield live


@pytest.fixture(scope="module")
def zorb(server: LiveServer) -> str:
    """A ready class named zorb (green images)."""
    with httpx.Client(base_url=server.url, headers=_bearer(server.client_key)) as http:
        answer = http.post("/v1/classes", data={"name": "zorb"}, files=class_images("green"))
        assert answer.status_code == 202, answer.text
        state = wait_for_status(http, answer.json()["id"], {"ready", "failed"}, timeout=120)
        assert state["status"] == "ready", state
        return str(answer.json()["id"])


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _openai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.client_key, max_retries=0)


def _data_uri(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def _vector(embedding: list[float] | str) -> np.ndarray:
    """A float list, or (asked for explicitly, the client hands it on as is) the base64 of the
    float32 little-endian bytes."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.array(embedding, dtype=np.float32)


def _native(server: LiveServer, **body: object) -> dict[str, list[list[float]]]:
    answer = httpx.post(
        f"{server.url}/v1/embeddings", json=body, headers=_bearer(server.client_key), timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_the_models_list_names_the_served_model(server: LiveServer) -> None:
    models = _openai(server).models.list()
    assert [m.id for m in models.data] == ["liteembed-tiny@random-0"]
    assert models.data[0].object == "model" and models.data[0].owned_by == "liteembed"
    assert _openai(server).models.retrieve("liteembed-tiny").id == "liteembed-tiny@random-0"


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_texts_images_and_learned_words_embed_as_the_native_route_does(
    server: LiveServer, zorb: str, encoding_format: str
) -> None:
    image = image_bytes(COLOURS["green"], seed=900)
    texts = ["a photo of a {zorb}", "a dog"]
    answer = _openai(server).embeddings.create(
        model="liteembed-tiny@random-0",
        input=[texts[0], _data_uri(image), texts[1]],
        encoding_format=encoding_format,  # type: ignore[arg-type]
    )
    assert answer.object == "list" and answer.model == "liteembed-tiny@random-0"
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert answer.usage.prompt_tokens > 0
    vectors = np.array([_vector(item.embedding) for item in answer.data], dtype=np.float32)
    assert vectors.shape == (3, 32)

    native = _native(server, images=[base64.b64encode(image).decode()], texts=texts)
    expected = np.array([native["texts"][0], native["images"][0], native["texts"][1]])
    # The same float32 values: base64 carries them bit for bit, floats by their repr.
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    # The learned word is not the plain text "zorb".
    plain = _native(server, texts=["a photo of a zorb"])["texts"][0]
    assert not np.allclose(vectors[0], plain, atol=1e-3)


def test_the_openai_client_defaults_work(server: LiveServer) -> None:
    """No encoding_format: the client asks for base64 and decodes it itself; a lone string."""
    answer = _openai(server).embeddings.create(model="liteembed-tiny", input="a dog")
    assert len(answer.data) == 1 and len(answer.data[0].embedding) == 32
    assert abs(float(np.linalg.norm(answer.data[0].embedding)) - 1.0) < 1e-4


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "text-embedding-3-small", "input": "a dog"}, "not served here"),
        ({"input": "a dog", "dimensions": 8}, "dimensions must be the model's own, 32"),
        ({"input": [[1, 2, 3]]}, "token arrays"),
        ({"input": []}, "must not be empty"),
        ({"input": "a {nothing}"}, "no class named 'nothing'"),
        ({"input": "a dog", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_bad_openai_requests_are_clear_422s(
    server: LiveServer, body: dict[str, object], words: str
) -> None:
    answer = httpx.post(
        f"{server.url}/v1/embeddings", json=body, headers=_bearer(server.client_key), timeout=60
    )
    assert answer.status_code == 422, answer.text
    assert words in answer.text
    with pytest.raises(openai.UnprocessableEntityError):
        _openai(server).embeddings.create(**{"model": "liteembed-tiny", **body})  # type: ignore[arg-type]
