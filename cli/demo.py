"""`liteembed demo`: see LiteEmbed work end to end, through the real service.

Starts `liteembed serve` (embedded worker, SQLite in a temporary directory, the shipped mini CLIP)
on a free local port, then, over HTTP only:

1. classifies held-out test images of three classes the mini CLIP never saw, with the base class
   names plus the three new names as plain labels (zero-shot: CLIP's own text features);
2. registers the three classes from a few generated images each and waits until they are ready;
3. classifies the same images with the same labels again: the three names now resolve to the
   personalised features, the base names still use CLIP's own;

and prints each image's prediction before and after, and the accuracy before and after (for the
held-out images and for a few base-class images, since a new class must not steal base images).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Three never-seen held-out classes, each with close base neighbours (7-gon vs 6/8-gon, 7-point
# vs 6/8-point star, 7 petals vs 6/8): the hard case the method is for.
DEFAULT_CLASSES = ("coin", "badge", "poppy")
SHOT_SEED = 31_337  # support images; the test images use other seeds, never the same images
TEST_SEED = 41_337
BASE_SEED = 51_337
READY_TIMEOUT_S = 300.0
TRAIN_TIMEOUT_S = 600.0

Printer = Callable[[str], None]


@dataclass
class Shot:
    """One classified image: its true label, and the top prediction before and after."""

    truth: str
    before: str = ""
    after: str = ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(
    workdir: Path, port: int, model: str, pretrained: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A real `liteembed serve` process; no API keys, so it binds 127.0.0.1 only."""
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env.update(
        {
            "LITEEMBED_DATABASE_URL": f"sqlite:///{workdir / 'liteembed.db'}",
            "LITEEMBED_MODEL": model,
            "LITEEMBED_PRETRAINED": pretrained,
            "LITEEMBED_CACHE_DIR": str(workdir / "cache"),
            "LITEEMBED_REDIS_URL": "",
            "LITEEMBED_ADMIN_KEYS": "",
            "LITEEMBED_CLIENT_KEYS": "",
            "LITEEMBED_LOG_LEVEL": "WARNING",
            # the repository's own packages, whatever the caller's working directory
            "PYTHONPATH": os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p),
        }
    )
    env.update(extra_env or {})
    command = [
        sys.executable,
        "-c",
        "from cli.main import main; raise SystemExit(main())",
        "serve",
        "--port",
        str(port),
    ]
    log = (workdir / "server.log").open("wb")
    # cwd = the temporary directory: a stray .env of the caller must not configure the demo
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(client: Any, server: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    raise TimeoutError(f"the service was not ready within {timeout:.0f} s")


def classify(client: Any, image: bytes, labels: Sequence[str]) -> str:
    response = client.post(
        "/v1/classify",
        files={"image": ("image.png", image, "image/png")},
        data={"labels": list(labels), "top_k": "1"},
    )
    response.raise_for_status()
    predictions = response.json()["predictions"]
    return str(predictions[0]["label"]) if predictions else ""


def register(client: Any, name: str, images: Sequence[bytes], hints: Sequence[str]) -> str:
    files = [("images", (f"{name}{i}.png", data, "image/png")) for i, data in enumerate(images)]
    data: dict[str, Any] = {"name": name}
    if hints:
        data["hints"] = list(hints)
    response = client.post("/v1/classes", files=files, data=data)
    if response.status_code != 202:
        raise RuntimeError(f"registering {name!r} failed: {response.status_code} {response.text}")
    return str(response.json()["id"])


def wait_trained(client: Any, ids: dict[str, str], timeout: float, out: Printer) -> None:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    pending = dict(ids)
    while pending and time.monotonic() < deadline:
        for name, class_id in list(pending.items()):
            body = client.get(f"/v1/classes/{class_id}").json()
            if body["status"] == "ready":
                diagnostics = body.get("diagnostics") or {}
                steps = diagnostics.get("steps_run", "?")
                out(f"  {name}: ready after {time.monotonic() - started:.1f} s ({steps} steps)")
                del pending[name]
            elif body["status"] == "failed":
                raise RuntimeError(f"training {name!r} failed: {body.get('error')}")
        time.sleep(0.3)
    if pending:
        raise TimeoutError(f"not ready within {timeout:.0f} s: {sorted(pending)}")


def accuracy(shots: Sequence[Shot], field: str) -> tuple[int, int]:
    return sum(getattr(s, field) == s.truth for s in shots), len(shots)


def _pct(hits: int, total: int) -> str:
    return f"{100 * hits / total:5.1f} % ({hits}/{total})" if total else "n/a"


def run_demo(
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    shots: int = 5,
    test_per_class: int = 10,
    base_images: int = 24,
    use_hints: bool = True,
    model: str = "liteembed-mini-v2",
    pretrained: str = "default",
    port: int | None = None,
    train_options: dict[str, Any] | None = None,
    keep_workdir: bool = False,
    out: Printer = print,
) -> int:
    """Run the demo; 0 when every step worked (whatever the accuracies are), 1 otherwise.

    `train_options` (OptimizationConfig fields) go to the service as LITEEMBED_TRAIN_OPTIONS;
    without them the service trains with the engine's defaults, as a user's service would."""
    import httpx

    from liteembed.synthetic import default_world

    world = default_world()
    unknown = [c for c in classes if c not in world.class_names]
    if unknown:
        out(
            f"unknown classes: {unknown}; held-out ones: "
            f"{[c.name for c in world.classes if c.split != 'base']}"
        )
        return 1
    base = [c.name for c in world.split("base")]
    labels = base + [c for c in classes if c not in base]
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="liteembed-demo-"))
    extra_env = {"LITEEMBED_TRAIN_OPTIONS": json.dumps(train_options)} if train_options else {}
    server = start_server(workdir, port, model, pretrained, extra_env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120.0) as client:
            out(f"LiteEmbed demo: `liteembed serve` at {url} (model {model}, SQLite in {workdir})")
            started = time.monotonic()
            wait_ready(client, server, READY_TIMEOUT_S)
            out(f"service ready after {time.monotonic() - started:.1f} s")

            # Test images: held-out ones, and some base ones (images never used for training).
            tests: list[tuple[Shot, bytes]] = []
            for index, name in enumerate(classes):
                for image in world.render([name], n=test_per_class, seed=TEST_SEED + index):
                    tests.append((Shot(name), png_bytes(image)))
            base_tests: list[tuple[Shot, bytes]] = []
            if base_images:
                picks = [base[(i * 7) % len(base)] for i in range(base_images)]
                for i, name in enumerate(picks):
                    image = world.render([name], n=1, seed=BASE_SEED + i)[0]
                    base_tests.append((Shot(name), png_bytes(image)))

            out(
                f"\n1. Zero-shot: {len(labels)} labels ({len(base)} base class names + "
                f"{', '.join(classes)} as plain words)"
            )
            for shot, data in tests + base_tests:
                shot.before = classify(client, data, labels)

            out(
                f"\n2. Registering {', '.join(classes)} from {shots} generated images each"
                + (" (hint: their category word)" if use_hints else "")
            )
            ids = {}
            for index, name in enumerate(classes):
                images = [
                    png_bytes(i) for i in world.render([name], n=shots, seed=SHOT_SEED + index)
                ]
                hints = [world[name].category] if use_hints else []
                ids[name] = register(client, name, images, hints)
            wait_trained(client, ids, TRAIN_TIMEOUT_S, out)

            out("\n3. The same images, the same labels; the three names are now personalised")
            for shot, data in tests + base_tests:
                shot.after = classify(client, data, labels)

        held = [s for s, _ in tests]
        base_shots = [s for s, _ in base_tests]
        out("")
        out(f"{'image':<12} {'zero-shot (before)':<22} {'personalised (after)':<22}")
        for i, shot in enumerate(held):
            mark_b = "ok" if shot.before == shot.truth else "x"
            mark_a = "ok" if shot.after == shot.truth else "x"
            label = f"{shot.truth} #{i % test_per_class + 1}"
            out(f"{label:<12} {shot.before + ' ' + mark_b:<22} {shot.after + ' ' + mark_a:<22}")
        out("")
        out(
            f"held-out accuracy ({len(labels)}-way): before {_pct(*accuracy(held, 'before'))}"
            f"  ->  after {_pct(*accuracy(held, 'after'))}"
        )
        if base_shots:
            out(
                f"base accuracy    ({len(labels)}-way): "
                f"before {_pct(*accuracy(base_shots, 'before'))}"
                f"  ->  after {_pct(*accuracy(base_shots, 'after'))}"
            )
        return 0
    except (httpx.HTTPError, RuntimeError, TimeoutError) as exc:
        out(f"demo failed: {exc}")
        log_file = workdir / "server.log"
        if log_file.exists():
            out("--- server log (last lines) ---")
            out("\n".join(log_file.read_text(errors="replace").splitlines()[-30:]))
        return 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if keep_workdir:
            out(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(run_demo())
