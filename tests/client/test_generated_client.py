"""A client generated from the live /openapi.json by openapi-python-client works unpatched:
register from four images (and two negative ones), wait for ready, classify (one image, with
abstain, a batch, JSON), embed, list, export, delete, and read a 404 and a 422 as the typed error
models the spec declares."""

from __future__ import annotations

import base64
import importlib
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.images import COLOURS, image_bytes
from tests.helpers.live_server import LiveServer

pytestmark = pytest.mark.slow

PACKAGE = "liteembed_generated_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, live_server: LiveServer) -> Iterator[Any]:
    """Generate the client package from the running server's spec and import it."""
    workdir = tmp_path_factory.mktemp("generated-client")
    spec = workdir / "openapi.json"
    spec.write_bytes(httpx.get(f"{live_server.url}/openapi.json").content)
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec)]
    command += ["--output-path", str(workdir / PACKAGE), "--meta", "none"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stdout, run.stdout
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(workdir))
        for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
            del sys.modules[name]


def _png(seed: int, types: Any, colour: str = "magenta") -> Any:
    data = io.BytesIO(image_bytes(COLOURS[colour], seed=seed))
    return types.File(payload=data, file_name=f"{seed}.png", mime_type="image/png")


def test_generated_client_registers_classifies_exports_and_deletes(
    generated: Any, live_server: LiveServer
) -> None:
    def api(name: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{name}")

    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    client = generated.AuthenticatedClient(base_url=live_server.url, token=live_server.admin_key)

    body = models.BodyRegisterClass(
        name="generated-zorb",
        images=[_png(seed, types) for seed in range(4)],
        negative_images=[_png(seed, types, "yellow") for seed in (20, 21)],
    )
    registered = api("classes.register_class").sync_detailed(client=client, body=body)
    assert registered.status_code == 202, registered.content
    assert isinstance(registered.parsed, models.ClassOut)
    class_id = registered.parsed.id

    deadline = time.monotonic() + 120
    while True:
        state = api("classes.get_class").sync(class_id, client=client)
        assert isinstance(state, models.ClassOut), state
        if state.status == "ready":
            assert isinstance(state.threshold, float) and state.impact == []
            break
        assert state.status in ("queued", "training"), state
        assert time.monotonic() < deadline, state
        time.sleep(0.2)

    # Ready means classifiable: the very next /classify scores it.
    predicted = api("classify.classify").sync(
        client=client, body=models.BodyClassify(image=_png(9, types), top_k=3)
    )
    assert isinstance(predicted, models.ClassifyOut), predicted
    assert class_id in [p.class_id for p in predicted.predictions], predicted
    assert all(isinstance(p.similarity, float) for p in predicted.predictions)
    confident = api("classify.classify").sync(
        client=client, body=models.BodyClassify(image=_png(9, types), top_k=3, abstain=True)
    )
    assert isinstance(confident, models.ClassifyOut), confident
    assert [p.label for p in confident.predictions] == [
        p.label for p in predicted.predictions if p.accepted
    ]

    batch = api("classify.classify").sync(
        client=client, body=models.BodyClassify(images=[_png(s, types) for s in (9, 10)], top_k=2)
    )
    assert isinstance(batch, models.ClassifyBatchOut), batch
    assert [r.predictions[0].class_id for r in batch.results] == [class_id, class_id]

    encoded = base64.b64encode(image_bytes(COLOURS["magenta"], seed=11)).decode()
    as_json = api("classify.classify_json").sync(
        client=client, body=models.ClassifyJson(image=encoded, labels=["generated-zorb", "car"])
    )
    assert isinstance(as_json, models.ClassifyOut), as_json
    assert as_json.predictions[0].class_id == class_id

    embedded = api("embeddings.embeddings").sync(
        client=client,
        body=models.EmbeddingsJson(images=[encoded], texts=["a sketch of a {generated-zorb}."]),
    )
    assert isinstance(embedded, models.EmbeddingsOut), embedded
    assert len(embedded.images) == len(embedded.texts) == 1
    assert len(embedded.images[0]) == len(embedded.texts[0]) == embedded.dim

    json_body = models.RegisterClassJson(name="generated-plax", images=[encoded] * 2)
    second = api("classes.register_class_json").sync_detailed(client=client, body=json_body)
    assert second.status_code == 202, second.content
    assert isinstance(second.parsed, models.ClassOut)
    assert (
        api("classes.delete_class").sync_detailed(second.parsed.id, client=client).status_code
        == 204
    )

    listed = api("classes.list_classes").sync(client=client, status="ready")
    assert isinstance(listed, models.ClassList)
    assert class_id in [c.id for c in listed.items]

    exported = api("classes.export_embedding").sync(class_id, client=client)
    assert isinstance(exported, models.EmbeddingOut)
    assert len(exported.text_feature) == exported.dim
    assert exported.threshold == state.threshold

    deleted = api("classes.delete_class").sync_detailed(class_id, client=client)
    assert deleted.status_code == 204

    missing = api("classes.get_class").sync(class_id, client=client)
    assert isinstance(missing, models.ErrorOut), missing
    assert class_id in missing.detail

    invalid = api("classes.list_classes").sync(client=client, limit=0)
    assert isinstance(invalid, models.ValidationErrorOut), invalid
    assert invalid.errors and invalid.errors[0].loc[-1] == "limit"
