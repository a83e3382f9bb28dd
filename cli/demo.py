"""`liteembed demo`: see LiteEmbed work end to end, through the real service.

Starts `liteembed serve` (embedded worker, SQLite in a temporary directory, the shipped mini CLIP)
on a free local port, then, over HTTP only, through the Python client:

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
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli import serve_process
from liteembed_client import Client, LiteEmbedClientError

# Three never-seen held-out classes, each with close base neighbours (7-gon vs 6/8-gon, 7-point
# vs 6/8-point star, 7 petals vs 6/8): the hard case the method is for.
DEFAULT_CLASSES = ("coin", "badge", "poppy")
SHOT_SEED = 31_337  # support images; the test images use other seeds, never the same images
TEST_SEED = 41_337
BASE_SEED = 51_337
READY_TIMEOUT_S = 300.0
TRAIN_TIMEOUT_S = 600.0

Printer = Callable[[str], None]
PngFile = tuple[str, bytes]


@dataclass
class Shot:
    """One classified image: its true label, and the top prediction before and after."""

    truth: str
    before: str = ""
    after: str = ""


def png_file(image: Any, name: str = "image.png") -> PngFile:
    """An upload with a .png name, so the client sends it as image/png."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return name, buffer.getvalue()


def server_settings(
    workdir: Path, model: str, pretrained: str, train_options: dict[str, Any] | None
) -> dict[str, str]:
    """No API keys, so the server binds 127.0.0.1 only; no Redis, so it trains in-process."""
    settings = {
        "LITEEMBED_DATABASE_URL": f"sqlite:///{workdir / 'liteembed.db'}",
        "LITEEMBED_MODEL": model,
        "LITEEMBED_PRETRAINED": pretrained,
        "LITEEMBED_CACHE_DIR": str(workdir / "cache"),
        "LITEEMBED_REDIS_URL": "",
        "LITEEMBED_ADMIN_KEYS": "",
        "LITEEMBED_CLIENT_KEYS": "",
        "LITEEMBED_LOG_LEVEL": "WARNING",
    }
    if train_options:
        settings["LITEEMBED_TRAIN_OPTIONS"] = json.dumps(train_options)
    return settings


def top_label(client: Client, image: PngFile, labels: Sequence[str]) -> str:
    top = client.classify(image, labels=labels, top_k=1).top
    return str(top.label) if top is not None else ""


def wait_trained(client: Client, ids: dict[str, str], timeout: float, out: Printer) -> None:
    """Wait for every class, printing each as it is found ready (the worker trains them in
    turn, so they are waited for in the order they were registered)."""
    started = time.monotonic()
    deadline = started + timeout
    for name, class_id in ids.items():
        left = max(deadline - time.monotonic(), 0.0)
        info = client.wait_ready(class_id, timeout=left, poll_interval=0.3)
        steps = (info.diagnostics or {}).get("steps_run", "?")
        out(f"  {name}: ready after {time.monotonic() - started:.1f} s ({steps} steps)")


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
    from testbed import default_world

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
    port = port or serve_process.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="liteembed-demo-"))
    log_path = workdir / "server.log"
    # The caller's LITEEMBED_ variables stay (a user's device choice, say), but the working
    # directory is the temporary one: a stray .env of the caller must not configure the demo.
    env = serve_process.environment(
        server_settings(workdir, model, pretrained, train_options), keep_settings=True
    )
    url = f"http://127.0.0.1:{port}"
    out(f"LiteEmbed demo: `liteembed serve` at {url} (model {model}, SQLite in {workdir})")
    started = time.monotonic()
    try:
        with (
            serve_process.serving(
                env=env, log_path=log_path, port=port, cwd=workdir, ready_timeout=READY_TIMEOUT_S
            ),
            Client(url, timeout=120.0) as client,
        ):
            out(f"service ready after {time.monotonic() - started:.1f} s")

            # Test images: held-out ones, and some base ones (images never used for training).
            tests: list[tuple[Shot, PngFile]] = []
            for index, name in enumerate(classes):
                for image in world.render([name], n=test_per_class, seed=TEST_SEED + index):
                    tests.append((Shot(name), png_file(image)))
            base_tests: list[tuple[Shot, PngFile]] = []
            if base_images:
                picks = [base[(i * 7) % len(base)] for i in range(base_images)]
                for i, name in enumerate(picks):
                    image = world.render([name], n=1, seed=BASE_SEED + i)[0]
                    base_tests.append((Shot(name), png_file(image)))

            out(
                f"\n1. Zero-shot: {len(labels)} labels ({len(base)} base class names + "
                f"{', '.join(classes)} as plain words)"
            )
            for shot, image in tests + base_tests:
                shot.before = top_label(client, image, labels)

            out(
                f"\n2. Registering {', '.join(classes)} from {shots} generated images each"
                + (" (hint: their category word)" if use_hints else "")
            )
            ids = {}
            for index, name in enumerate(classes):
                rendered = world.render([name], n=shots, seed=SHOT_SEED + index)
                images = [png_file(image, f"{name}{i}.png") for i, image in enumerate(rendered)]
                hints = [world[name].category] if use_hints else []
                ids[name] = client.register_class(name, images, hints=hints).id
            wait_trained(client, ids, TRAIN_TIMEOUT_S, out)

            out("\n3. The same images, the same labels; the three names are now personalised")
            for shot, image in tests + base_tests:
                shot.after = top_label(client, image, labels)

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
    except serve_process.NotReady as exc:  # its message carries the server log's tail
        out(f"demo failed: {exc}")
        return 1
    except LiteEmbedClientError as exc:
        out(f"demo failed: {exc}")
        if log_path.exists():
            out("--- server log (last lines) ---")
            out("\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))
        return 1
    finally:
        if keep_workdir:
            out(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(run_demo())
