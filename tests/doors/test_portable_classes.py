"""Classes leave their deployment: exported on one `serve` (the CLI's `export --bundle`) and
imported on a second of the same model (`import`), ready at once with the same scores; on a
deployment of another model, learned again from the bundled images; a malformed bundle is a
422 that writes nothing. A deployment restored from a backup (`sqlite3 .backup`, as
docs/deployment.md says) answers as the original did."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from liteembed_client import cli
from tests.helpers.api import wait_for_status
from tests.helpers.images import COLOURS, class_images, image_bytes
from tests.helpers.live_server import LiveServer, running_server

CLASSES = {"zorb": "green", "plax": "magenta"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[dict[str, Any]]:
    """`origin` with two ready classes; `twin` (same model) and `other` (another model) empty."""
    with ExitStack() as stack:
        started = {
            name: stack.enter_context(
                running_server(tmp_path_factory.mktemp(name), cache_dir, env=env)
            )
            for name, env in (
                ("origin", {}),
                ("twin", {}),
                ("other", {"LITEEMBED_SEED": "1"}),
            )
        }
        ids = {}
        with _http(started["origin"]) as origin:
            for name, colour in CLASSES.items():
                answer = origin.post("/v1/classes", data={"name": name}, files=class_images(colour))
                assert answer.status_code == 202, answer.text
                ids[name] = answer.json()["id"]
            for class_id in ids.values():
                state = wait_for_status(origin, class_id, {"ready", "failed"}, timeout=120)
                assert state["status"] == "ready", state
        yield {**started, "ids": ids}


def _http(server: LiveServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.client_key}"},
        timeout=60,
    )


def _cli(server: LiveServer, *args: str) -> str:
    """`liteembed VERB ARGS` (the client verbs) against `server`; what it printed."""
    out = io.StringIO()
    parser_args = [*args, "--url", server.url, "--key", server.client_key]
    parser = argparse.ArgumentParser()
    cli.add_remote_commands(parser.add_subparsers(dest="command", required=True))
    assert cli.run_remote_command(parser.parse_args(parser_args), out=out) == 0
    return out.getvalue()


def _scores(server: LiveServer, colour: str) -> dict[str, tuple[float, float]]:
    image = image_bytes(COLOURS[colour], seed=777)
    with _http(server) as http:
        answer = http.post(
            "/v1/classify",
            files={"image": ("q.png", image, "image/png")},
            data={"labels": list(CLASSES), "top_k": "2"},
        )
    assert answer.status_code == 200, answer.text
    return {p["label"]: (p["score"], p["similarity"]) for p in answer.json()["predictions"]}


def test_a_class_exported_on_one_deployment_scores_the_same_on_another(
    servers: dict[str, Any], tmp_path: Path
) -> None:
    origin, twin = servers["origin"], servers["twin"]
    paths = []
    for name, class_id in servers["ids"].items():
        path = tmp_path / f"{name}.json"
        assert "bundle" in _cli(origin, "export", class_id, "--bundle", "-o", str(path))
        bundle = json.loads(path.read_text())
        assert bundle["format"] == "liteembed.class" and bundle["version"] == 1
        assert bundle["name"] == name and len(bundle["images"]) == 4
        assert len(bundle["text_feature"]) == 32 and bundle["threshold"] is not None
        paths.append(str(path))

    imported = _cli(twin, "import", *paths).splitlines()
    assert [line.split("\t")[1:] for line in imported] == [[n, "ready"] for n in CLASSES]
    for colour in CLASSES.values():
        mine, theirs = _scores(origin, colour), _scores(twin, colour)
        assert mine.keys() == theirs.keys()
        for label in mine:
            np.testing.assert_allclose(mine[label], theirs[label], rtol=0, atol=1e-6)
    # Scored without labels too (the class matrix has it), and its threshold came along.
    with _http(twin) as http:
        top = http.post(
            "/v1/classify",
            files={"image": ("q.png", image_bytes(COLOURS["green"], seed=5), "image/png")},
        ).json()["predictions"][0]
        assert top["label"] == "zorb"
        twin_zorb = http.get(f"/v1/classes/{top['class_id']}").json()
    with _http(origin) as http:
        origin_zorb = http.get(f"/v1/classes/{servers['ids']['zorb']}").json()
    assert twin_zorb["threshold"] == origin_zorb["threshold"]
    # Importing again is a conflict, unless replacing.
    with _http(twin) as http:
        again = http.post("/v1/classes:import", json=json.loads(Path(paths[0]).read_text()))
        assert again.status_code == 409, again.text


def test_another_model_learns_the_class_again_from_its_images(servers: dict[str, Any]) -> None:
    origin, other = servers["origin"], servers["other"]
    with _http(origin) as http:
        bundle = http.get(f"/v1/classes/{servers['ids']['zorb']}/export").json()
        bare = http.get(
            f"/v1/classes/{servers['ids']['zorb']}/export", params={"images": "false"}
        ).json()
    assert "images" not in bare or bare["images"] == []
    with _http(other) as http:
        refused = http.post("/v1/classes:import", json=bare)
        assert refused.status_code == 422 and "no images" in refused.json()["detail"]
        answer = http.post("/v1/classes:import", json=bundle)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued"
        assert answer.json()["model"] == "liteembed-tiny@random-1"
        state = wait_for_status(http, answer.json()["id"], {"ready", "failed"}, timeout=120)
        assert state["status"] == "ready", state


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"version": 2}, "version"),
        ({"format": "something"}, "format"),
        ({"name": None}, "name"),
        ({"text_feature": [0.1, 0.2]}, "text_feature has 2 values"),
        ({"text_feature": ["x"] * 32}, "text_feature"),
        ({"images": ["http://169.254.169.254/latest"]}, "not fetched"),
        ({"images": ["bm90IGFuIGltYWdl"]}, "images[0]"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_malformed_bundle_is_a_422_and_writes_nothing(
    servers: dict[str, Any], change: dict[str, Any], words: str
) -> None:
    with _http(servers["origin"]) as http:
        bundle = http.get(f"/v1/classes/{servers['ids']['plax']}/export").json()
    bundle["name"] = "plax-copy"
    bundle.update(change)
    with _http(servers["twin"]) as http:
        before = http.get("/v1/classes").json()["total"]
        answer = http.post("/v1/classes:import", json=bundle)
        assert answer.status_code in (400, 422), answer.text
        assert words in answer.text
        assert http.get("/v1/classes").json()["total"] == before
    with _http(servers["twin"]) as http:
        not_json = http.post(
            "/v1/classes:import", content=b"[1, 2", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 422


def test_a_restored_backup_answers_as_the_original(
    servers: dict[str, Any], tmp_path: Path, cache_dir: Path
) -> None:
    origin = servers["origin"]
    live_db = origin.log_path.parent / "liteembed.db"
    restored = tmp_path / "restored"
    restored.mkdir()
    # The documented backup of a live SQLite database: consistent while the service runs.
    subprocess.run(["sqlite3", str(live_db), f".backup {restored / 'liteembed.db'}"], check=True)
    with running_server(restored, cache_dir) as copy:
        for colour in CLASSES.values():
            assert _scores(copy, colour) == _scores(origin, colour)
        with _http(copy) as http:
            listed = {item["id"] for item in http.get("/v1/classes").json()["items"]}
    assert set(servers["ids"].values()) <= listed
