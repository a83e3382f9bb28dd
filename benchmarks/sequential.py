"""Sequential registration: the test held-out classes registered one at a time, as users of the
service add them, each learned after the ones before it are in use.

Per support draw and setting, the 12 classes are learned in turn (LiteEmbed with the given
settings and the model's reference bank); every earlier class is a registered negative (its text
feature) and, with protection, a protected class (its exemplars' image features: the new word is
trained not to win them, as the service's worker does). After each registration the joint
classifier (base words + the classes so far) scores the test gallery; reported at the end: each
class's test accuracy, the share of its test images it kept from the moment it joined, base
accuracy and the harmonic mean.

    python -m benchmarks.sequential --draws 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.data import world_task
from benchmarks.methods import Context
from benchmarks.metrics import harmonic_mean, mean_se, paired_difference
from liteembed import (
    ClassRequest,
    OptimizationConfig,
    ProtectedClass,
    find_bank,
    learn_classes,
    load_backend,
    load_vocabulary,
)
from liteembed.config import recorded_defaults

RESULTS_DIR = Path(__file__).parent / "results"


def run_draw(
    backend: Any,
    vocabulary: Any,
    task: Any,
    ctx: Context,
    draw_index: int,
    config: OptimizationConfig,
    *,
    protect: bool,
    shots: int,
) -> dict[str, Any]:
    bank = find_bank(backend)
    draw = task.draw(draw_index)
    registered: dict[str, torch.Tensor] = {}
    protected: list[ProtectedClass] = []
    features: list[torch.Tensor] = []
    base_count = len(task.base)
    held = ~task.base_mask
    at_join: dict[str, float] = {}
    for j, name in enumerate(task.heldout):
        request = ClassRequest(
            name=name,
            images=draw.shots(name, shots),
            hints=task.hints.get(name, ()),
            not_negatives=tuple(task.heldout),
        )
        learned = learn_classes(
            backend,
            vocabulary,
            [request],
            registered=dict(registered),
            protected=list(protected) if protect else [],
            bank=bank,
            config=config,
        )[0]
        feature = F.normalize(learned.text_feature.float(), dim=-1)
        features.append(feature)
        registered[name] = feature
        assert learned.exemplar_features is not None
        protected.append(ProtectedClass(name, feature, learned.exemplar_features))
        predictions = task.test_features @ torch.cat([ctx.base_text, torch.stack(features)]).T
        own = task.test_labels == base_count + j
        at_join[name] = float((predictions.argmax(dim=1)[own] == base_count + j).float().mean())
    logits = task.test_features @ torch.cat([ctx.base_text, torch.stack(features)]).T
    predictions = logits.argmax(dim=1)
    per_class = {}
    kept = {}
    for j, name in enumerate(task.heldout):
        own = task.test_labels == base_count + j
        per_class[name] = float((predictions[own] == base_count + j).float().mean())
        kept[name] = per_class[name] / at_join[name] if at_join[name] else 1.0
    heldout = float((predictions[held] == task.test_labels[held]).float().mean())
    base = float((predictions[~held] == task.test_labels[~held]).float().mean())
    return {
        "draw": draw_index,
        "heldout": heldout,
        "base_after": base,
        "hm": harmonic_mean(heldout, base),
        "per_class": per_class,
        "at_join": at_join,
        "kept": kept,
        "min_kept": min(kept.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="liteembed-mini-v2")
    parser.add_argument("--changes", default="", help="JSON of OptimizationConfig changes")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path(".liteembed-cache"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "sequential.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    backend = load_backend(args.model, "default", device="cpu")
    vocabulary = load_vocabulary(backend, args.cache_dir)
    config = recorded_defaults(backend.model_id) or OptimizationConfig()
    config = config.with_(**json.loads(args.changes)) if args.changes else config
    task = world_task(backend, "test_heldout")
    ctx = Context.build(backend, task)
    started = time.perf_counter()
    settings = {"protected": True, "names only": False}
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
    for index in range(args.draws):
        for setting, protect in settings.items():
            row = run_draw(
                backend, vocabulary, task, ctx, index, config, protect=protect, shots=args.shots
            )
            rows[setting].append(row)
            print(
                f"draw {index} {setting:10s}: HM {row['hm']:.3f} held-out {row['heldout']:.3f} "
                f"base {row['base_after']:.3f} min kept {row['min_kept']:.3f}",
                flush=True,
            )
    result = {
        "model": backend.model_id,
        "shots": args.shots,
        "config": config.to_dict(),
        "rows": rows,
        "summary": {s: summary(r) for s, r in rows.items()},
        "protected_vs_names_only_hm": paired_difference(
            [r["hm"] for r in rows["protected"]], [r["hm"] for r in rows["names only"]]
        ),
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(
            ["python -m benchmarks.sequential", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        key: mean_se([r[key] for r in rows]) for key in ("hm", "heldout", "base_after", "min_kept")
    }
    kept = [v for r in rows for v in r["kept"].values()]
    out["classes_keeping_95"] = sum(v >= 0.95 for v in kept) / len(kept)
    out["mean_kept"] = sum(kept) / len(kept)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Sequential registration ({result['model']}, K={result['shots']}, "
        f"{len(result['rows']['protected'])} draws)",
        "",
        f"Command: `{result['command']}`",
        "",
        "| setting | HM | held-out | base | mean kept | classes keeping >= 95 % | min kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, s in result["summary"].items():
        lines.append(
            f"| {setting} | {100 * s['hm']['mean']:.2f} ± {100 * s['hm']['se']:.2f} | "
            f"{100 * s['heldout']['mean']:.1f} | {100 * s['base_after']['mean']:.1f} | "
            f"{100 * s['mean_kept']:.1f} % | {100 * s['classes_keeping_95']:.0f} % | "
            f"{100 * s['min_kept']['mean']:.1f} % |"
        )
    d = result["protected_vs_names_only_hm"]
    lines += [
        "",
        f"Protected vs names only, HM: {100 * d['mean']:+.2f} ± {100 * d['se']:.2f} "
        f"({int(d['won'])}/{int(d['n'])} draws won).",
        "",
        "Kept: a class's test accuracy at the end over its accuracy when it joined.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
