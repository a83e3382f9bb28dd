"""The trust goals, measured through a real `liteembed serve` (SQLite, embedded worker) with the
Python client, as a user would see them:

- sequential (liteembed-tiny, random weights): four visually distinct classes (rings, stripes,
  two crops of one photo; `testbed.patterns`) registered one after another, each ready before the
  next; then every class's own exemplars are classified (top-1), and every class must say its
  `impact`. Goal: >= 19/20 exemplars back as their class.
- open set (liteembed-mini-v2): three never-seen held-out classes of the synthetic world
  registered (their category word as hint); then, with `abstain=true`, fresh images of them,
  images of the six validation held-out classes nobody registered, and noise images. Goals: >= 90 %
  of the registered classes' images keep their class, >= 80 % of the others and all noise get an
  empty list.

    python -m benchmarks.trust_check                      # both; JSON to benchmarks/results/
    python -m benchmarks.trust_check --only open_set --world-shots 5
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from cli import serve_process
from liteembed_client import Classification, Client

RESULTS_DIR = Path(__file__).parent / "results"
ADMIN_KEY = "trust-admin-key-0123456789"
# Made-up names: a new word, as a user's class would be.
SEQUENTIAL_NAMES = {
    "rings": "ringlet",
    "stripes": "stripel",
    "photo top-left": "kitten",
    "photo bottom-right": "meadow",
}
REGISTERED_WORLD = ("coin", "poppy", "beads")  # never-seen held-out classes, three categories
UNREGISTERED_SPLIT = "val_heldout"  # six classes nobody registers
EXEMPLAR_SEED = 11
FRESH_SEED = 5_150  # renders no exemplar uses
NOISE_SEED = 7_777  # not liteembed.threshold.NOISE_SEED: images the thresholds never saw
REQUEST_IMAGES = 32  # the service's default MAX_CLASSIFY_IMAGES


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def server_settings(workdir: Path, model: str, **extra: str) -> dict[str, str]:
    """`serve` as a new user starts it: SQLite, the embedded worker, the model's defaults."""
    settings = {
        "LITEEMBED_DATABASE_URL": f"sqlite:///{workdir / 'liteembed.db'}",
        "LITEEMBED_MODEL": model,
        "LITEEMBED_DEVICE": "cpu",
        "LITEEMBED_CACHE_DIR": str(serve_process.REPO / ".liteembed-cache" / "benchmarks"),
        "LITEEMBED_ADMIN_KEYS": ADMIN_KEY,
        "LITEEMBED_HEARTBEAT_SECONDS": "0.5",
        "LITEEMBED_CLASSIFIER_REFRESH_SECONDS": "0.5",
    }
    if model == "liteembed-tiny":
        settings["LITEEMBED_PRETRAINED"] = "random"
    return settings | extra


@contextmanager
def served(workdir: Path, settings: dict[str, str]) -> Iterator[Client]:
    env = serve_process.environment(settings | {"PYTHONUNBUFFERED": "1"})
    log_path = workdir / "server.log"
    with (
        serve_process.serving(env=env, log_path=log_path, cwd=workdir) as server,
        Client(server.url, key=ADMIN_KEY, timeout=120) as client,
    ):
        yield client


def register_ready(
    client: Client,
    name: str,
    images: Sequence[bytes],
    *,
    hints: Sequence[str] = (),
    timeout: float = 600,
) -> str:
    info = client.register_class(
        name, [(f"{name}{i}.png", data) for i, data in enumerate(images)], hints=hints
    )
    ready = client.wait_ready(info.id, timeout=timeout, poll_interval=0.2)
    return ready.id


def classify_all(client: Client, images: Sequence[bytes], **options: Any) -> list[Classification]:
    results: list[Classification] = []
    for start in range(0, len(images), REQUEST_IMAGES):
        chunk = images[start : start + REQUEST_IMAGES]
        results += client.classify_many(
            [(f"q{start + i}.png", data) for i, data in enumerate(chunk)], **options
        )
    return results


# --- sequential registration (liteembed-tiny) -----------------------------------------------------


def sequential_check(client: Client, *, shots: int = 5, seed: int = 0) -> dict[str, Any]:
    """Register the four pattern sets one after another (each ready before the next), then
    classify every exemplar; also what each class's `impact` says."""
    from testbed.patterns import PATTERN_SETS, pattern_images

    exemplars = {
        SEQUENTIAL_NAMES[kind]: [png(i) for i in pattern_images(kind, shots, seed=seed)]
        for kind in PATTERN_SETS
    }
    ids: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name, images in exemplars.items():
        started = time.monotonic()
        ids[name] = register_ready(client, name, images)
        seconds[name] = round(time.monotonic() - started, 2)
    names = list(exemplars)
    flat = [image for name in names for image in exemplars[name]]
    truth = [name for name in names for _ in exemplars[name]]
    results = classify_all(client, flat, top_k=1)
    predicted = [r.top.label if r.top else None for r in results]
    per_class = {
        name: sum(p == t for p, t in zip(predicted, truth, strict=True) if t == name)
        for name in names
    }
    infos = {name: client.get_class(class_id) for name, class_id in ids.items()}
    return {
        "model": results[0].model if results else None,
        "shots": shots,
        "own_exemplars_correct": sum(per_class.values()),
        "own_exemplars_total": len(flat),
        "per_class_correct": per_class,
        "confusions": [
            {"image_of": t, "predicted": p} for p, t in zip(predicted, truth, strict=True) if p != t
        ],
        "impact_present": all(
            isinstance(info.model_dump().get("impact"), list) for info in infos.values()
        ),
        "impact": {
            name: [item.model_dump() for item in info.impact] for name, info in infos.items()
        },
        "thresholds": {name: info.threshold for name, info in infos.items()},
        "register_to_ready_s": seconds,
    }


# --- open set (liteembed-mini-v2) ----------------------------------------------------------------


def open_set_check(
    client: Client, *, shots: int = 8, fresh: int = 20, unknown: int = 10, noise: int = 20
) -> dict[str, Any]:
    """Register REGISTERED_WORLD, then classify fresh images of them, images of the never-
    registered validation held-out classes and noise, with and without `abstain`."""
    from liteembed.threshold import noise_images
    from testbed import default_world

    world = default_world()
    registered = list(REGISTERED_WORLD)
    category = {c.name: c.category for c in world.classes}
    support = world.render(registered, n=shots, seed=EXEMPLAR_SEED)
    for index, name in enumerate(registered):
        images = [png(i) for i in support[index * shots : (index + 1) * shots]]
        register_ready(client, name, images, hints=[category[name]])
    others = [c.name for c in world.split(UNREGISTERED_SPLIT)]
    known = [png(i) for i in world.render(registered, n=fresh, seed=FRESH_SEED)]
    known_truth = [name for name in registered for _ in range(fresh)]
    strangers = [png(i) for i in world.render(others, n=unknown, seed=FRESH_SEED)]
    static = [png(i) for i in noise_images(world.image_size, count=noise, seed=NOISE_SEED)]
    top_k = len(registered)
    groups = {"registered": known, "unregistered": strangers, "noise": static}
    answers = {
        abstain: {
            group: classify_all(client, images, top_k=top_k, abstain=abstain)
            for group, images in groups.items()
        }
        for abstain in (False, True)
    }
    kept = answers[True]["registered"]
    keep = sum(
        bool(r.predictions) and r.predictions[0].label == name
        for r, name in zip(kept, known_truth, strict=True)
    )
    per_class_keep = {
        name: sum(
            bool(r.predictions) and r.predictions[0].label == name
            for r, t in zip(kept, known_truth, strict=True)
            if t == name
        )
        / fresh
        for name in registered
    }
    plain = answers[False]["registered"]
    top1 = sum(
        r.top is not None and r.top.label == t for r, t in zip(plain, known_truth, strict=True)
    )

    def empty_share(group: str) -> float:
        found = answers[True][group]
        return sum(not r.predictions for r in found) / len(found)

    def top_scores(group: str) -> list[float]:
        return [r.top.score for r in answers[False][group] if r.top is not None]

    return {
        "model": plain[0].model if plain else None,
        "registered": registered,
        "unregistered": others,
        "shots": shots,
        "images": {"registered": len(known), "unregistered": len(strangers), "noise": len(static)},
        "registered_keep_class": keep / len(known),
        "registered_keep_class_per_class": per_class_keep,
        "registered_top1_without_abstain": top1 / len(known),
        "unregistered_empty": empty_share("unregistered"),
        "noise_empty": empty_share("noise"),
        "median_top_score_without_abstain": {group: _median(top_scores(group)) for group in groups},
        "thresholds": {info.name: info.threshold for info in client.iter_classes(status="ready")},
    }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


# --- the command ---------------------------------------------------------------------------------


def run(only: str | None, shots: int, world_shots: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    if only in (None, "sequential"):
        with (
            tempfile.TemporaryDirectory() as tmp,
            served(Path(tmp), server_settings(Path(tmp), "liteembed-tiny")) as client,
        ):
            report["sequential"] = sequential_check(client, shots=shots)
    if only in (None, "open_set"):
        with (
            tempfile.TemporaryDirectory() as tmp,
            served(Path(tmp), server_settings(Path(tmp), "liteembed-mini-v2")) as client,
        ):
            report["open_set"] = open_set_check(client, shots=world_shots)
    return report


def table(report: dict[str, Any]) -> str:
    rows = ["| goal | measured | target |", "|---|---|---|"]
    if "sequential" in report:
        s = report["sequential"]
        rows.append(
            f"| tiny, 4 classes one after another: own exemplars back as their class | "
            f"{s['own_exemplars_correct']}/{s['own_exemplars_total']} | >= 19/20 |"
        )
        rows.append(f"| tiny: `impact` on every class | {s['impact_present']} | True |")
    if "open_set" in report:
        o = report["open_set"]
        rows.append(
            f"| mini v2, abstain: registered images keep their class | "
            f"{o['registered_keep_class']:.1%} | >= 90 % |"
        )
        rows.append(
            f"| mini v2, abstain: never-registered classes get [] | "
            f"{o['unregistered_empty']:.1%} | >= 80 % |"
        )
        rows.append(f"| mini v2, abstain: noise gets [] | {o['noise_empty']:.1%} | 100 % |")
        rows.append(
            f"| mini v2, without abstain: registered top-1 | "
            f"{o['registered_top1_without_abstain']:.1%} | (reference) |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("sequential", "open_set"), default=None)
    parser.add_argument("--shots", type=int, default=5, help="exemplars per pattern class (tiny)")
    parser.add_argument(
        "--world-shots", type=int, default=8, help="exemplars per world class (mini v2)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "trust_check.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = run(args.only, args.shots, args.world_shots)
    report["seconds"] = round(time.monotonic() - started, 1)
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
