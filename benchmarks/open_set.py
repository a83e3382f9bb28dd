"""Open-set rejection: does a learned class know when an image is none of the classes?

On the synthetic world (liteembed-mini-v2 by default), per support draw: the `--split` held-out
classes are learned together (LiteEmbed with the given settings and the model's reference bank),
each with its acceptance threshold (liteembed.threshold). Then, in two settings:

- registered: the classifier holds only the learned classes (what a tenant of the service has);
  known = their test images; unknown = images of classes never registered, in two parts: the
  never-seen classes (outside the vocabulary: for the test classes the validation held-out ones,
  for a validation split the other validation split's, never a test class) and the base classes
  (the model knows them, nobody registered them);
- joint: the learned classes join the base classes' own words (plain words: the bank's threshold,
  raised to each word's noise ceiling, as the service scores a plain label);
  known = every test image; unknown = the never-seen classes' images.

and noise images (uniform and smooth colour noise, seeds the engine's threshold never used).
Scorings: ours, the top class's similarity minus its threshold (accepted at >= 0; an image the
noise gate takes for noise is accepted as nothing, as in the service), against the softmax
probability of the top class (what /v1/classify's score is); with `--margins`, ours with the
reference bank's words as competitors (`liteembed.background`) at each margin, in the
registered setting (in the joint one the bank's words are classes already). Reported per part of
the unknowns and together: AUROC of known against unknown, the unknown rejected at the cut that
accepts 95 % of the known, and each scoring at its own threshold (known accepted, unknown and
noise rejected); the background scorings also minus ours, paired by draw.

    python -m benchmarks.open_set --split val_heldout --margins 0,0.02 --out /tmp/open_set.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.data import SPLITS, encode, world_task
from benchmarks.methods import Context, MethodSpec
from benchmarks.metrics import mean_se, paired_difference
from liteembed import (
    ClassRequest,
    OptimizationConfig,
    find_bank,
    load_backend,
    load_vocabulary,
    plain_word_threshold,
)
from liteembed.background import (
    Background,
    background_score,
    background_words,
    nearest_background,
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
# The background words (`liteembed.background`) and their plain-word thresholds.
Competitors = tuple[Background, torch.Tensor]
# Per split, the split whose classes are its never-seen unknowns (no test class on validation).
NEVER_SEEN = {
    "test_heldout": "val_heldout",
    "val_heldout": "val_lookalike",
    "val_lookalike": "val_heldout",
}


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
    background: Competitors | None = None,
    margins: Sequence[float] = (),
) -> dict[str, torch.Tensor]:
    """Each scoring's score per image, accepted at >= 0 where it has a threshold:
    - ours: the top class's similarity minus its threshold (less 2, so below every accepted
      score, for an image the noise gate takes for noise); alone: the same without the gate;
    - softmax: the top class's softmax probability;
    - background+m: ours, rejected where a background word's similarity beats the class's by
      more than m (`liteembed.background`); excess+m: where a background word clears its
      plain-word threshold by more than the class clears its own, plus m."""
    similarity = features @ weights.T
    top = similarity.argmax(dim=1)
    top_similarity = similarity.gather(1, top[:, None])[:, 0]
    alone = top_similarity - thresholds[top]
    ours = alone
    if gate is not None and not math.isnan(gate[1]):
        ours = torch.where(noise_likeness(features, gate[0]) > gate[1], alone - 2.0, alone)
    out = {
        "ours": ours,
        "alone": alone,
        "softmax": F.softmax(scale * similarity, dim=1).max(dim=1).values,
    }
    if background is not None and len(background[0]) and margins:
        words, word_limits = background
        nearest = nearest_background(features, words)[1]
        # The rule as each side's excess over its own threshold (tried; it stays off).
        excess = (features @ words.features.T - word_limits).max(dim=1).values
        for m in margins:
            out[f"background{m:+.2f}"] = background_score(ours, top_similarity, nearest, m)
            out[f"excess{m:+.2f}"] = torch.minimum(ours, ours - excess + m)
    return out


def measures(
    known: torch.Tensor, unknown: dict[str, torch.Tensor], noise: torch.Tensor
) -> dict[str, float]:
    """One scoring on one draw: at its own threshold (>= 0 accepted) and as a score (AUROC, the
    share rejected at the cut that accepts 95 % of the known), each part of the unknowns alone."""
    out = {
        "known_accepted": float((known >= 0).float().mean()),
        "noise_rejected": float((noise < 0).float().mean()),
        "noise_rejected_at_95": rejected_at_known_rate(known, noise, KNOWN_ACCEPT),
        # The shift of every threshold that would accept 95 % of the known images.
        "known_margin_q05": float(torch.quantile(known, 1 - KNOWN_ACCEPT)),
    }
    for part, images in unknown.items():
        out[f"unknown_rejected_{part}"] = float((images < 0).float().mean())
        out[f"auroc_{part}"] = auroc(known, images)
        out[f"rejected_at_95_{part}"] = rejected_at_known_rate(known, images, KNOWN_ACCEPT)
    return out


def evaluate_setting(
    known: torch.Tensor,
    unknown: dict[str, torch.Tensor],
    noise: torch.Tensor,
    weights: torch.Tensor,
    thresholds: torch.Tensor,
    scale: float,
    gate: tuple[torch.Tensor, float],
    background: Competitors | None = None,
    margins: Sequence[float] = (),
) -> dict[str, dict[str, float]]:
    """{scoring: measures}; the unknowns by part (`all` is every part together)."""
    parts = {"all": torch.cat(list(unknown.values())), **unknown} if len(unknown) > 1 else unknown
    scored = [
        scores(x, weights, thresholds, scale, gate, background, margins)
        for x in (known, *parts.values(), noise)
    ]
    out = {}
    for scoring in scored[0]:
        unknowns = {p: s[scoring] for p, s in zip(parts, scored[1:-1], strict=True)}
        out[scoring] = measures(scored[0][scoring], unknowns, scored[-1][scoring])
    return out


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
    # The never-seen classes (outside the vocabulary, never registered): for the test classes
    # the validation ones; for a validation split the other validation split's, so tuning never
    # looks at a test class.
    never = [c.name for c in world.split(NEVER_SEEN[args.split])]
    unknown_val = encode(backend, world.render(never, n=args.per_class, seed=UNKNOWN_SEED))
    base_sample = encode(backend, world.render(task.base, n=10, seed=UNKNOWN_SEED + 1))
    noise = encode(backend, noise_images(64, args.noise, seed=NOISE_SEED))
    word_threshold = plain_word_threshold(backend, vocabulary, bank)
    # As the service scores a plain label: the model's threshold raised to the word's noise ceiling.
    engine_noise = noise_features(backend)
    base_thresholds = word_thresholds(ctx.base_text, engine_noise, word_threshold)
    # As the service gates every image: the engine's noise images against the bank's real ones.
    gate = (engine_noise, noise_gate(bank.features, engine_noise) if bank else math.nan)
    # The known concepts a registered class competes with: the bank's words, never its own name.
    words = background_words(vocabulary, bank, task.heldout)
    background = (words, word_thresholds(words.features, engine_noise, word_threshold))
    margins = [float(m) for m in args.margins.split(",")] if args.margins else []
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
            {"never": unknown_val, "base": base_sample},
            noise,
            weights,
            thresholds,
            scale,
            gate,
            background,
            margins,
        )
        # Beside the base words every background word is a class already: no competitors left.
        joint_weights = torch.cat([ctx.base_text, weights])
        joint_thresholds = torch.cat([base_thresholds, thresholds])
        joint = evaluate_setting(
            task.test_features,
            {"never": unknown_val},
            noise,
            joint_weights,
            joint_thresholds,
            scale,
            gate,
        )
        draws.append({"draw": index, "registered": registered, "joint": joint})
        shown = " | ".join(f"{k} {fmt(v)}" for k, v in registered.items() if k != "softmax")
        print(f"draw {index}: {shown}", flush=True)
    summary = {
        setting: {
            scoring: summarise([d[setting][scoring] for d in draws])
            for scoring in draws[0][setting]
        }
        for setting in ("registered", "joint")
    }
    return {
        "model": backend.model_id,
        "shots": args.shots,
        "draws": draws,
        "config": config.to_dict(),
        "word_threshold": word_threshold,
        "noise_gate": gate[1],
        "background_words": len(words),
        "never_seen": never,
        "seconds": round(time.perf_counter() - started, 1),
        "split": args.split,
        "summary": summary,
        "against_ours": against_ours(draws, "registered"),
        "command": args.command,
    }


def fmt(row: dict[str, float]) -> str:
    return (
        f"known {row['known_accepted']:.1%} unknown {row['unknown_rejected_all']:.1%} "
        f"(never {row['unknown_rejected_never']:.1%}, base {row['unknown_rejected_base']:.1%})"
    )


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: mean_se([r[key] for r in rows]) for key in rows[0]}


# Measures compared draw by draw between a background scoring and ours.
COMPARED = (
    "known_accepted",
    "unknown_rejected_all",
    "unknown_rejected_never",
    "unknown_rejected_base",
    "auroc_all",
    "rejected_at_95_all",
    "rejected_at_95_never",
    "rejected_at_95_base",
)


def against_ours(draws: list[dict[str, Any]], setting: str) -> dict[str, dict[str, Any]]:
    """Each background scoring minus ours, paired over the draws."""
    rows = [d[setting] for d in draws]
    return {
        scoring: {
            key: paired_difference([r[scoring][key] for r in rows], [r["ours"][key] for r in rows])
            for key in COMPARED
        }
        for scoring in rows[0]
        if scoring.startswith(("background", "excess"))
    }


def pm(value: dict[str, float], percent: bool = True) -> str:
    if percent:
        return f"{100 * value['mean']:.1f} ± {100 * value['se']:.1f}"
    return f"{value['mean']:.3f} ± {value['se']:.3f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Open-set rejection ({result['model']}, K={result['shots']}, "
        f"{len(result['draws'])} draws, {result['split']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Never-seen classes: {', '.join(result['never_seen'])}; background words: "
        f"{result['background_words']} (the reference bank's). Percent, mean ± SE over draws.",
        "",
    ]
    for setting, by_scoring in result["summary"].items():
        parts = [k.removeprefix("auroc_") for k in by_scoring["ours"] if k.startswith("auroc_")]
        lines += [f"## {setting}", "", "At each scoring's threshold (softmax has none):", ""]
        head = ["scoring", "known accepted", *[f"unknown rejected: {p}" for p in parts]]
        lines += ["| " + " | ".join([*head, "noise rejected"]) + " |"]
        lines.append("|" + "---|" * (len(head) + 1))
        for scoring, s in by_scoring.items():
            if scoring == "softmax":
                continue
            cells = [pm(s["known_accepted"]), *[pm(s[f"unknown_rejected_{p}"]) for p in parts]]
            lines.append(f"| {scoring} | " + " | ".join([*cells, pm(s["noise_rejected"])]) + " |")
        lines += ["", "As a score (AUROC; rejected at the cut that accepts 95 % of the known):", ""]
        head = ["scoring", *[f"AUROC {p}" for p in parts], *[f"at 95 %: {p}" for p in parts]]
        lines += ["| " + " | ".join([*head, "noise at 95 %"]) + " |"]
        lines.append("|" + "---|" * (len(head) + 1))
        for scoring, s in by_scoring.items():
            if scoring == "alone":
                continue
            cells = [pm(s[f"auroc_{p}"], percent=False) for p in parts]
            cells += [pm(s[f"rejected_at_95_{p}"]) for p in parts]
            lines.append(
                f"| {scoring} | " + " | ".join([*cells, pm(s["noise_rejected_at_95"])]) + " |"
            )
        lines.append("")
    if result["against_ours"]:
        lines += [
            "## registered: each background scoring minus ours, paired by draw",
            "",
            "Points (AUROC: x100); won/lost: draws better/worse than ours.",
            "",
            "| scoring | " + " | ".join(COMPARED) + " |",
            "|" + "---|" * (len(COMPARED) + 1),
        ]
        for scoring, diffs in result["against_ours"].items():
            cells = [
                f"{100 * d['mean']:+.1f} ± {100 * d['se']:.1f} ({d['won']:.0f}/{d['lost']:.0f})"
                for d in (diffs[k] for k in COMPARED)
            ]
            lines.append(f"| {scoring} | " + " | ".join(cells) + " |")
        lines.append("")
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
    parser.add_argument(
        "--margins",
        default="",
        help="comma-separated margins of the background rule to score beside ours (none: off)",
    )
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
