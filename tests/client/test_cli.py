"""The client verbs of `liteembed` against a live server: add (with --wait), classes, classify,
export, delete; the URL and key from the environment or from flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli.main import main
from liteembed_client import Client
from tests.helpers.images import COLOURS, image_bytes
from tests.helpers.live_server import REPO, LiveServer


def write_images(folder: Path, colour: str, count: int = 4, first_seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        seed = first_seed + i
        (folder / f"{colour}{seed}.png").write_bytes(image_bytes(COLOURS[colour], seed=seed))
    (folder / "notes.txt").write_text("not an image: a folder's other files are left out")
    return folder


@pytest.fixture
def service_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> LiveServer:
    monkeypatch.setenv("LITEEMBED_URL", live_server.url)
    monkeypatch.setenv("LITEEMBED_KEY", live_server.admin_key)
    return live_server


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_add_wait_list_classify_export_delete(
    service_env: LiveServer, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_images(tmp_path / "zorb", "green")
    code, out, err = run(capsys, "add", "cli-zorb", str(folder), "--hint", "star", "--wait")
    assert code == 0, err
    lines = out.splitlines()
    class_id = lines[0].split("\t")[0]
    assert lines == [f"{class_id}\tcli-zorb\tqueued", f"{class_id}\tcli-zorb\tready"]
    assert "100%" in err  # the progress bar, on stderr

    other = write_images(tmp_path / "plax", "magenta")
    code, out, err = run(capsys, "add", "cli-plax", *map(str, sorted(other.glob("*.png"))))
    assert code == 0, err
    plax_id = out.split("\t")[0]

    code, out, _ = run(capsys, "classes", "--status", "ready", "--json")
    ready = {json.loads(line)["id"]: json.loads(line) for line in out.splitlines()}
    assert ready[class_id]["name"] == "cli-zorb" and ready[class_id]["hints"] == ["star"]
    code, out, _ = run(capsys, "classes")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "PROGRESS", "HINTS", "CREATED", "MODEL"]
    assert any(r.split()[:3] == [class_id, "cli-zorb", "ready"] for r in rows)

    queries = [tmp_path / "q1.png", tmp_path / "q2.png"]
    for i, query in enumerate(queries):
        query.write_bytes(image_bytes(COLOURS["green"], seed=900 + i))
    requests = []
    classify_many = Client.classify_many

    def counted(self: Client, images: Any, **kwargs: Any) -> Any:
        requests.append(len(list(images)))
        return classify_many(self, images, **kwargs)

    monkeypatch.setattr(Client, "classify_many", counted)
    code, out, err = run(capsys, "classify", *map(str, queries), "--labels", "cli-zorb", "car")
    assert code == 0, err
    assert requests == [2]  # every image in one request
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(q) for q in queries]
    assert all(line.split("\t")[1].startswith("cli-zorb ") for line in out.splitlines())
    code, out, _ = run(capsys, "classify", str(queries[0]), "--top-k", "1", "--json")
    (result,) = [json.loads(line) for line in out.splitlines()]
    assert result["image"] == str(queries[0]) and len(result["predictions"]) == 1

    code, out, err = run(capsys, "embed", str(queries[0]), "--text", "a sketch of a {cli-zorb}.")
    assert code == 0, err
    image_line, text_line = [json.loads(line) for line in out.splitlines()]
    assert (
        image_line["image"] == str(queries[0]) and text_line["text"] == "a sketch of a {cli-zorb}."
    )
    assert len(image_line["feature"]) == len(text_line["feature"])
    assert run(capsys, "embed")[0] == 2

    feature_file = tmp_path / "zorb.npy"
    code, out, err = run(capsys, "export", class_id, "-o", str(feature_file))
    assert code == 0, err
    feature = np.load(feature_file)
    assert feature.dtype == np.float32 and feature.ndim == 1
    assert np.linalg.norm(feature) == pytest.approx(1.0, abs=1e-3)
    token_file = tmp_path / "zorb-token.bin"  # any name: nothing appended
    assert run(capsys, "export", class_id, "-o", str(token_file), "--token")[0] == 0
    with Client(service_env.url, service_env.admin_key) as client:
        embedding = client.get_embedding(class_id)
    np.testing.assert_array_equal(feature, np.float32(embedding.text_feature))
    np.testing.assert_array_equal(np.load(token_file), np.float32(embedding.token_embedding))

    code, out, err = run(capsys, "delete", class_id, plax_id)
    assert code == 0, err
    assert out.splitlines() == [f"deleted {class_id}", f"deleted {plax_id}"]
    code, out, _ = run(capsys, "classes", "--json")
    assert class_id not in out and plax_id not in out


def test_flags_override_the_environment_and_errors_are_readable(
    service_env: LiveServer, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITEEMBED_KEY", "wrong-key")
    code, _, err = run(capsys, "classes")
    assert code == 1 and "401" in err and "Bearer" in err
    code, _, err = run(capsys, "classes", "--key", service_env.admin_key)
    assert code == 0, err
    # A client key lists its own tenant's classes.
    code, _, err = run(capsys, "classes", "--key", service_env.client_key)
    assert code == 0, err

    code, _, err = run(capsys, "delete", "no-such-id", "--key", service_env.admin_key)
    assert code == 1 and "404" in err and "no-such-id" in err
    code, _, err = run(capsys, "add", "x", str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "add", "x", str(empty))
    assert code == 2 and "no image files" in err
    code, _, err = run(capsys, "export", "no-such-id", "-o", str(tmp_path / "x.npy"))
    assert code == 1 and not (tmp_path / "x.npy").exists()


def test_the_installed_command_reads_url_and_key_from_the_environment(
    live_server: LiveServer, tmp_path: Path
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "LITEEMBED_URL": live_server.url,
        "LITEEMBED_KEY": live_server.admin_key,
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "classes", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert json.loads(line)["model"].startswith("liteembed-tiny")


def test_add_with_negatives_and_classify_with_abstain(
    service_env: LiveServer, tmp_path: Path, capsys: Any
) -> None:
    """`--negative` sends "not this" images; `--abstain` prints only accepted predictions, and
    the plain listing marks a prediction below its threshold with `?`."""
    folder = write_images(tmp_path / "vorn", "blue")
    negatives = write_images(tmp_path / "not-vorn", "yellow", count=2)
    code, out, err = run(
        capsys, "add", "cli-vorn", str(folder), "--negative", str(negatives), "--wait"
    )
    assert code == 0, err
    class_id = out.splitlines()[-1].split("\t")[0]
    with Client(service_env.url, key=service_env.admin_key) as client:
        assert client.get_class(class_id).threshold is not None
    query = tmp_path / "q.png"
    query.write_bytes(image_bytes(COLOURS["blue"], seed=700))
    code, out, err = run(capsys, "classify", str(query), "--labels", "cli-vorn", "car", "--json")
    assert code == 0, err
    (everything,) = [json.loads(line) for line in out.splitlines()]
    accepted = [p["label"] for p in everything["predictions"] if p["accepted"]]
    code, out, err = run(
        capsys, "classify", str(query), "--labels", "cli-vorn", "car", "--json", "--abstain"
    )
    (kept,) = [json.loads(line) for line in out.splitlines()]
    assert [p["label"] for p in kept["predictions"]] == accepted
    code, out, _ = run(capsys, "classify", str(query), "--labels", "cli-vorn", "car")
    assert out.strip().split("\t")[1].split(", ") == [
        f"{p['label']} {p['score']:.3f}{'' if p['accepted'] else '?'}"
        for p in everything["predictions"]
    ]
