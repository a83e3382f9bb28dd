"""The validation search of the image-evidence settings (liteembed.evidence), on three protocols
that each see a side of the trade-off, never on the test classes:

- the validation held-out classes (most have no base look-alikes, so they show what evidence
  costs the new classes' own images);
- base-as-new folds (benchmarks/base_as_new.py: base classes with base look-alikes learned as
  new, so they show the base images a new word takes; the model was pretrained on them, so its
  images of them are well apart and few are taken);
- the look-alike validation classes (testbed world split `val_lookalike`: never-seen classes each
  built from base classes with one part changed, as the test classes are, none next to a test
  class; textual inversion takes most images of four of their base neighbours there).

Each variant is scored by the mean of its HM on the protocols scored (`--protocols`; all three
by default), over the same draws; paired
differences are against the first variant. Variants are
`kind:lambda_img:holdout_evidence:bank_words:bank_images[:lambda_c]` with kind `ti` (textual
inversion settings) or `le` (LiteEmbed's previous defaults: coarse alignment with the category
hint), or `defaults[+name=value...]`: the current defaults
(`benchmarks/results/configs/evidence_defaults.json`, no hints) with config changes,
`lookalike_images=N` giving N images of each of a class's look-alikes as its negative images (the
base-as-new and look-alike validation classes have look-alikes).

    python -m benchmarks.evidence_search --draws 10
    python -m benchmarks.evidence_search --draws 10 --variants defaults \
        defaults+evidence_margin=0.02 --out benchmarks/results/evidence_margin_search.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.base_as_new import base_as_new_task
from benchmarks.data import Task, world_task
from benchmarks.methods import Context, MethodSpec, evaluate
from benchmarks.metrics import paired_difference
from liteembed import OptimizationConfig, find_bank, load_backend, load_vocabulary
from liteembed.config import from_recorded

RESULTS_DIR = Path(__file__).parent / "results"
PREVIOUS_DEFAULTS = RESULTS_DIR / "configs" / "engine_defaults.json"
CURRENT_DEFAULTS = RESULTS_DIR / "configs" / "evidence_defaults.json"
PROTOCOLS = ("validation", "base-as-new", "look-alike")
GRID = (
    "ti:0:0:0:0",
    "ti:0.3:0:8:16",
    "ti:0.5:0:8:16",
    "ti:0.3:1:8:16",
    "le:0:0:0:0",
    "le:0.3:0:8:16",
    "le:0.5:0:8:16",
    "le:0.5:0:8:16:0.3",
)


def variant_spec(variant: str, previous: OptimizationConfig, bank: Any) -> MethodSpec:
    """The benchmark row of a variant (module docstring)."""
    if variant.split("+")[0] == "defaults":
        config = from_recorded(json.loads(CURRENT_DEFAULTS.read_text())["defaults"])
        changes = dict(item.split("=", 1) for item in variant.split("+")[1:])
        lookalikes = int(changes.pop("lookalike_images", 0))
        fields = OptimizationConfig.__dataclass_fields__
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise SystemExit(f"unknown config fields in {variant!r}: {unknown}")
        # Values as JSON (0.02, 16, false, ["a"]); `bool("0")` would be True.
        config = config.with_(**{k: json.loads(v) for k, v in changes.items()})
        return MethodSpec(variant, "liteembed", config, False, (("bank", bank),), "", lookalikes)
    config, hints = variant_config(variant, previous)
    uses_bank = config.lambda_img > 0 or config.holdout_evidence
    return MethodSpec(
        variant,
        "liteembed" if hints else "textual-inversion",
        config,
        hints,
        options=(("bank", bank),) if uses_bank else (),
    )


def variant_config(variant: str, previous: OptimizationConfig) -> tuple[OptimizationConfig, bool]:
    """The config of a `kind:...` variant and whether it passes category hints."""
    kind, lam, hold, words, images, *rest = variant.split(":")
    base = previous if kind == "le" else previous.with_(lambda_c=0.0, lambda_f=0.0)
    config = base.with_(
        lambda_img=float(lam),
        holdout_evidence=bool(int(hold)),
        bank_words=int(words),
        bank_images=int(images),
    )
    if rest:
        config = config.with_(lambda_c=float(rest[0]))
    return config, kind == "le"


def search_inputs(model: str, cache_dir: Path) -> tuple[Any, Any, Any, OptimizationConfig]:
    """The model, its vocabulary and reference bank, and the previous defaults the `kind:...`
    variants start from."""
    backend = load_backend(model, "default", device="cpu")
    vocabulary = load_vocabulary(backend, cache_dir)
    previous = from_recorded(json.loads(PREVIOUS_DEFAULTS.read_text())["defaults"])
    return backend, vocabulary, find_bank(backend), previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="liteembed-mini-v2")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(GRID))
    parser.add_argument(
        "--protocols",
        nargs="+",
        default=list(PROTOCOLS),
        choices=list(PROTOCOLS),
        help="the protocols scored (module docstring); a variant's score is their mean HM",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path(".liteembed-cache"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "evidence_search.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    backend, vocabulary, bank, previous = search_inputs(args.model, args.cache_dir)
    makers = {
        "validation": lambda: [world_task(backend, "val_heldout")],
        "base-as-new": lambda: [base_as_new_task(backend, bank, fold) for fold in range(2)],
        "look-alike": lambda: [world_task(backend, "val_lookalike")],
    }
    protocols: dict[str, list[Task]] = {p: makers[p]() for p in args.protocols}
    started = time.perf_counter()
    hms: dict[str, dict[str, list[float]]] = {v: {} for v in args.variants}
    detail: dict[str, dict[str, Any]] = {v: {} for v in args.variants}
    for variant in args.variants:
        spec = variant_spec(variant, previous, bank)
        for protocol, tasks in protocols.items():
            outcomes = []
            for task in tasks:
                ctx = Context.build(backend, task)
                draws = [(i, task.draw(i)) for i in range(args.draws)]
                outcomes += evaluate(spec, ctx, backend, vocabulary, draws, args.shots)
            hms[variant][protocol] = [o.hm for o in outcomes]
            detail[variant][protocol] = {
                key: sum(getattr(o, key) for o in outcomes) / len(outcomes)
                for key in ("hm", "heldout", "base_after")
            }
            print(f"{variant:22s} {protocol:12s} {fmt(detail[variant][protocol])}", flush=True)
    reference = args.variants[0]
    rows = []
    for variant in args.variants:
        score = sum(detail[variant][p]["hm"] for p in protocols) / len(protocols)
        rows.append(
            {
                "variant": variant,
                "score": score,
                **{p: detail[variant][p] for p in protocols},
                **{
                    f"vs_reference_{p}": paired_difference(hms[variant][p], hms[reference][p])
                    for p in protocols
                },
            }
        )
    best = max(rows, key=lambda r: r["score"])
    result = {
        "model": backend.model_id,
        "shots": args.shots,
        "draws": args.draws,
        "reference": reference,
        "rows": rows,
        "chosen": best["variant"],
        "chosen_config": variant_spec(best["variant"], previous, bank).config.to_dict(),
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(
            ["python -m benchmarks.evidence_search", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def fmt(row: dict[str, float]) -> str:
    return (
        f"HM {100 * row['hm']:.2f}  held-out {100 * row['heldout']:.1f}  "
        f"base {100 * row['base_after']:.1f}"
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Image-evidence validation search ({result['model']}, K={result['shots']}, "
        f"{result['draws']} draws per protocol and fold)",
        "",
        f"Command: `{result['command']}`. Chosen (best mean HM): `{result['chosen']}`.",
        "",
    ]
    protocols = [p for p in PROTOCOLS if p in result["rows"][0]]
    header = "".join(f" {p} HM (held-out / base) | vs first |" for p in protocols)
    lines += ["| variant | mean HM |" + header, "|---|---|" + "---|---|" * len(protocols)]
    for r in result["rows"]:
        cells = [r["variant"], f"{100 * r['score']:.2f}"]
        for p in protocols:
            d, diff = r[p], r[f"vs_reference_{p}"]
            cells.append(
                f"{100 * d['hm']:.2f} ({100 * d['heldout']:.1f} / {100 * d['base_after']:.1f})"
            )
            cells.append(
                f"{100 * diff['mean']:+.2f} ± {100 * diff['se']:.2f} "
                f"({int(diff['won'])}/{int(diff['n'])})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
