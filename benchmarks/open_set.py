"""Open-set rejection: does a learned class know when an image is none of the classes?

On the synthetic world (liteembed-mini-v2 by default), per support draw: the test held-out classes
are learned together (LiteEmbed with the given settings and the model's reference bank), each with
its acceptance threshold (liteembed.threshold). Then, in two settings:

- registered: the classifier holds only the learned classes (what a tenant of the service has);
  known = their test images; unknown = images of classes never registered: the validation
  held-out classes and the base classes (the model knows them, nobody registered them);
- joint: the learned classes join the base classes' own words (plain words: the bank's threshold,
  raised to each word's noise ceiling, as the service scores a plain label);
  known = every test image; unknown = the validation held-out classes' images.

and noise images (uniform and smooth colour noise, seeds the engine's threshold never used).
Scores: ours, the top class's similarity minus its threshold (accepted at >= 0; an image the
noise gate takes for noise is accepted as nothing, as in the service), against the softmax
probability of the top class (what /v1/classify's score is). Reported: AUROC of known
against unknown, the unknown rejected at the cut that accepts 95 % of the known, and ours at the
stored thresholds (known accepted, unknown and noise rejected), and the thresholds alone.

    python -m benchmarks.open_set --config benchmarks/results/configs/engine_defaults.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.data import SPLITS, encode, world_task
from benchmarks.methods import Context, MethodSpec
from benchmarks.metrics import mean_se
from liteembed import (
    ClassRequest,
    OptimizationConfig,
    find_bank,
    load_backend,
    load_vocabulary,
    plain_word_threshold,
)
from liteembed.config import from_recorded, recorded_defaults
from liteembed.threshold import (
    noise_features,
    noise_gate,
    noise_images,
    noise_likeness,
    word_thresholds,
)

RESULTS_DIR = Path(__file__).parent / "results"
UNKNOWN_SEED = 8_901  # renders of the never-registered classes: no other gallery uses it
NOISE_SEED = 4_321  # not liteembed.threshold.NOISE_SEED
KNOWN_ACCEPT = 0.95


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """P(a known image scores above an unknown one), ties half."""
    diff = known[:, None] - unknown[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def rejected_at_known_rate(known: torch.Tensor, unknown: torch.Tensor, rate: float) -> float:
    """Share of unknown images below the cut that accepts `rate` of the known ones."""
    cut = torch.quantile(known, 1 - rate)
    return float((unknown < cut).float().mean())


def scores(
    features: torch.Tensor,
    weights: torch.Tensor,
    thresholds: torch.Tensor,
    scale: float,
    gate: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, softmax) per image: the top class's similarity minus its threshold (less 2, so
    below every accepted score, for an image the noise gate takes for noise), and the top
    class's softmax probability."""
    similarity = features @ weights.T
    top = similarity.argmax(dim=1)
    ours = similarity.gather(1, top[:, None])[:, 0] - thresholds[top]
    if gate is not None and not math.isnan(gate[1]):
        ours = torch.where(noise_likeness(features, gate[0]) > gate[1], ours - 2.0, ours)
    softmax = F.softmax(scale * similarity, dim=1).max(dim=1).values
    return ours, softmax


def evaluate_setting(
    known: torch.Tensor,
    unknown: torch.Tensor,
    noise: torch.Tensor,
    weights: torch.Tensor,
    thresholds: torch.Tensor,
    scale: float,
    gate: tuple[torch.Tensor, float],
) -> dict[str, float]:
    ours_k, soft_k = scores(known, weights, thresholds, scale, gate)
    ours_u, soft_u = scores(unknown, weights, thresholds, scale, gate)
    ours_n, soft_n = scores(noise, weights, thresholds, scale, gate)
    # The thresholds alone, without the noise gate: what the gate adds, in the same run.
    alone_k = scores(known, weights, thresholds, scale)[0]
    alone_n = scores(noise, weights, thresholds, scale)[0]
    return {
        "auroc_ours": auroc(ours_k, ours_u),
        "auroc_softmax": auroc(soft_k, soft_u),
        "rejected_at_95_ours": rejected_at_known_rate(ours_k, ours_u, KNOWN_ACCEPT),
        "rejected_at_95_softmax": rejected_at_known_rate(soft_k, soft_u, KNOWN_ACCEPT),
        "noise_rejected_at_95_ours": rejected_at_known_rate(ours_k, ours_n, KNOWN_ACCEPT),
        "noise_rejected_at_95_softmax": rejected_at_known_rate(soft_k, soft_n, KNOWN_ACCEPT),
        # The shift of every threshold that would accept 95 % of the known images.
        "known_margin_q05": float(torch.quantile(ours_k, 1 - KNOWN_ACCEPT)),
        "stored_known_accepted": float((ours_k >= 0).float().mean()),
        "stored_unknown_rejected": float((ours_u < 0).float().mean()),
        "stored_noise_rejected": float((ours_n < 0).float().mean()),
        "threshold_only_known_accepted": float((alone_k >= 0).float().mean()),
        "threshold_only_noise_rejected": float((alone_n < 0).float().mean()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    backend = load_backend(args.model, "default", device="cpu")
    vocabulary = load_vocabulary(backend, args.cache_dir)
    bank = find_bank(backend)
    if args.config:
        config = from_recorded(json.loads(args.config.read_text())["defaults"])
    else:
        config = recorded_defaults(backend.model_id) or OptimizationConfig()
    config = config.with_(**json.loads(args.changes)) if args.changes else config
    task = world_task(backend, args.split)
    ctx = Context.build(backend, task)
    from testbed import default_world

    world = default_world()
    # On the test classes the validation ones are the never-registered classes; tuning on the
    # validation classes never looks at a test class (its unknowns are base classes and noise).
    never = [c.name for c in world.split("val_heldout")] if args.split == "test_heldout" else []
    unknown_val = encode(backend, world.render(never, n=args.per_class, seed=UNKNOWN_SEED))
    base_sample = encode(backend, world.render(task.base, n=10, seed=UNKNOWN_SEED + 1))
    noise = encode(backend, noise_images(64, args.noise, seed=NOISE_SEED))
    word_threshold = plain_word_threshold(backend, vocabulary, bank)
    # As the service scores a plain label: the model's threshold raised to the word's noise ceiling.
    engine_noise = noise_features(backend)
    base_thresholds = word_thresholds(ctx.base_text, engine_noise, word_threshold)
    # As the service gates every image: the engine's noise images against the bank's real ones.
    gate = (engine_noise, noise_gate(bank.features, engine_noise) if bank else math.nan)
    spec = MethodSpec("liteembed", "liteembed", config, True, options=(("bank", bank),))
    held = ~task.base_mask
    draws: list[dict[str, Any]] = []
    started = time.perf_counter()
    for index in range(args.draws):
        draw = task.draw(index)
        requests = [
            ClassRequest(
                name=name,
                images=draw.shots(name, args.shots),
                hints=task.hints.get(name, ()),
                not_negatives=tuple(task.heldout),
            )
            for name in task.heldout
        ]
        learned = spec.build().fit_classes(backend, vocabulary, requests)
        weights = torch.stack([F.normalize(c.feature.float(), dim=-1) for c in learned])
        thresholds = torch.tensor([float(c.threshold) for c in learned])
        scale = float(backend.logit_scale)
        registered = evaluate_setting(
            task.test_features[held],
            torch.cat([unknown_val, base_sample]),
            noise,
            weights,
            thresholds,
            scale,
            gate,
        )
        row: dict[str, Any] = {"draw": index, "registered": registered}
        if len(unknown_val):
            joint_weights = torch.cat([ctx.base_text, weights])
            joint_thresholds = torch.cat([base_thresholds, thresholds])
            row["joint"] = evaluate_setting(
                task.test_features, unknown_val, noise, joint_weights, joint_thresholds, scale, gate
            )
        draws.append(row)
        shown = " | ".join(f"{k} {fmt(v)}" for k, v in row.items() if k != "draw")
        print(f"draw {index}: {shown}", flush=True)
    return {
        "model": backend.model_id,
        "shots": args.shots,
        "draws": draws,
        "config": config.to_dict(),
        "word_threshold": word_threshold,
        "noise_gate": gate[1],
        "seconds": round(time.perf_counter() - started, 1),
        "split": args.split,
        "summary": {s: summarise([d[s] for d in draws]) for s in draws[0] if s != "draw"},
        "command": args.command,
    }


def fmt(row: dict[str, float]) -> str:
    return (
        f"AUROC {row['auroc_ours']:.3f}/{row['auroc_softmax']:.3f}, "
        f"stored: known {row['stored_known_accepted']:.1%}, "
        f"unknown {row['stored_unknown_rejected']:.1%}, noise {row['stored_noise_rejected']:.1%}"
    )


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: mean_se([r[key] for r in rows]) for key in rows[0]}


LABELS = {
    "auroc": "AUROC, known vs unknown",
    "rejected_at_95": "unknown rejected at 95 % known accepted",
    "noise_rejected_at_95": "noise rejected at 95 % known accepted",
}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Open-set rejection ({result['model']}, K={result['shots']}, "
        f"{len(result['draws'])} draws)",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    for setting in result["summary"]:
        s = result["summary"][setting]
        lines += [f"## {setting}", "", "| measure | ours (threshold) | softmax score |"]
        lines.append("|---|---|---|")
        for key, label in LABELS.items():
            ours, soft = s[f"{key}_ours"], s[f"{key}_softmax"]
            lines.append(
                f"| {label} | {ours['mean']:.3f} ± {ours['se']:.3f} | "
                f"{soft['mean']:.3f} ± {soft['se']:.3f} |"
            )
        lines += [
            "",
            "At the stored thresholds: known accepted "
            f"{s['stored_known_accepted']['mean']:.1%}, unknown rejected "
            f"{s['stored_unknown_rejected']['mean']:.1%}, noise rejected "
            f"{s['stored_noise_rejected']['mean']:.1%} (the thresholds alone, without the noise "
            f"gate: known {s['threshold_only_known_accepted']['mean']:.1%}, noise "
            f"{s['threshold_only_noise_rejected']['mean']:.1%}).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="liteembed-mini-v2")
    parser.add_argument("--config", type=Path, default=None, help="a settings file (tune.py)")
    parser.add_argument("--changes", default="", help="JSON of OptimizationConfig changes")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--split", default="test_heldout", choices=list(SPLITS))
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--noise", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path(".liteembed-cache"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "open_set.json")
    args = parser.parse_args(argv)
    args.command = " ".join(
        ["python -m benchmarks.open_set", *(sys.argv[1:] if argv is None else argv)]
    )
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
