"""The rare-class benchmark harness.

Joint setting: the held-out classes are added to the base classes and one classifier scores every
test image against all of them. Per method, shot count K and support draw it records held-out
top-1, base top-1 before and after the held-out classes are added, their harmonic mean (the
headline), text-to-image retrieval mAP of the held-out classes over the whole test gallery
(plug-and-play methods only) and optimisation seconds per class.

Synthetic world (the shipped mini CLIP; test held-out classes)::

    python -m benchmarks.rare_classes --out benchmarks/results

Real data (any open_clip model; one subfolder per class; --heldout picks the new classes)::

    python -m benchmarks.rare_classes --model ViT-B-32 --pretrained openai \
        --folder /data/dishes --heldout "pani puri" "misal pav" --out results/dishes

LiteEmbed's settings are the engine's defaults for the model, or those of a settings file given
with --config (benchmarks/tune.py writes one, chosen_config.json, from the validation classes).

The tables and the plot are written by benchmarks/rare_classes_report.py.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.data import SPLITS, Task, folder_task, world_task
from benchmarks.methods import LINEAR_PROBE_C, Context, MethodSpec, evaluate
from benchmarks.metrics import mean_std
from benchmarks.rare_classes_report import (
    MIN_DRAWS,
    REFERENCE,
    summarise,
    write_markdown,
    write_plot,
)
from liteembed import (
    ClassRequest,
    OptimizationConfig,
    learn_classes,
    list_methods,
    load_backend,
    load_vocabulary,
    method_entry,
)
from liteembed.config import RECORDED_DEFAULTS, from_recorded, recorded_defaults

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
# Every draw renders this many support images per class (or the largest K asked, if more), so the
# shots of a given K and draw do not depend on which other K are requested.
SUPPORT_POOL = 16
# The second pass's settings as validation chose them for the mini CLIP v2 (its recorded
# defaults), for settings files without it.
SECOND_PASS = {
    k: v for k, v in RECORDED_DEFAULTS["liteembed-mini-v2@a03cbbb3c42e"].items() if "reweigh" in k
}


# ------------------------------------------------------------------ method list


def load_chosen(path: Path | None, model_id: str = "") -> dict[str, Any]:
    """The settings of the rows: {"defaults": config, "full": config, "use_hints": bool}, from a
    settings file (a validation search's chosen_config.json, or one of benchmarks/results/configs/)
    or, without one, the engine's defaults for `model_id` (its recorded ones where there are),
    category hints passed as a user would. Never a file read implicitly: a result file left from
    another model or an older engine must not pass for the current defaults."""
    if path is not None:
        if not Path(path).exists():
            raise SystemExit(f"--config {path}: no such file")
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return data
    defaults = recorded_defaults(model_id) or OptimizationConfig()
    return {
        "defaults": defaults.to_dict(),
        "full": defaults.with_(parameterization="pca").to_dict(),
        "use_hints": True,
        "source": "the engine's defaults for the model (liteembed/config.py), hints passed",
    }


def config_from(values: dict[str, Any]) -> OptimizationConfig:
    return from_recorded(values)


def build_methods(chosen: dict[str, Any]) -> list[MethodSpec]:
    """One row per registered method, in registration order; textual inversion, LiteEmbed and
    the linear probe take their settings from the validation search (`chosen`).

    LiteEmbed gives several rows: "liteembed (full)" switches on all three of the paper's parts
    (coarse alignment, fine separation, the PCA box) with the validated weights; the three
    ablations each drop one; "liteembed (defaults)" is what the validation search picked."""
    rows: list[MethodSpec] = []
    for name in list_methods():
        variants = _ROW_SETTINGS.get(name)
        if variants is not None:
            rows += variants(chosen)
        else:
            rows.append(MethodSpec(name, name, note=method_entry(name).description))
    return rows


def _textual_inversion_rows(chosen: dict[str, Any]) -> list[MethodSpec]:
    defaults = config_from(chosen["defaults"])
    # Textual inversion as published: image alignment only, no image evidence.
    ti = defaults.with_(
        lambda_c=0.0,
        lambda_f=0.0,
        parameterization="token",
        lambda_img=0.0,
        holdout_evidence=False,
    )
    return [MethodSpec(REFERENCE, "textual-inversion", ti, False, note="alignment only, raw token")]


def _bank(config: OptimizationConfig) -> tuple[tuple[str, Any], ...]:
    """The model's shipped reference bank for a row that uses image evidence."""
    return (("bank", "shipped"),) if config.lambda_img > 0 or config.holdout_evidence else ()


def _liteembed_rows(chosen: dict[str, Any]) -> list[MethodSpec]:
    defaults = config_from(chosen["defaults"])
    # The same augmentation as the reference row (textual inversion, from the defaults): no row
    # here is about augmentation, so none may differ from its reference by it.
    full = config_from(chosen["full"]).with_(
        augment_views=defaults.augment_views, augment_min_scale=defaults.augment_min_scale
    )
    hints = bool(chosen.get("use_hints", False))
    full_hints = bool(chosen.get("full_use_hints", hints))
    bank = _bank(full)
    rows = [
        MethodSpec(
            "liteembed (full)",
            "liteembed",
            full,
            full_hints,
            note="coarse + fine + PCA box",
            options=bank,
        ),
        MethodSpec(
            "liteembed w/o coarse", "liteembed", full.with_(lambda_c=0.0), full_hints, options=bank
        ),
        MethodSpec(
            "liteembed w/o fine", "liteembed", full.with_(lambda_f=0.0), full_hints, options=bank
        ),
        MethodSpec(
            "liteembed w/o PCA box",
            "liteembed",
            full.with_(parameterization="token"),
            full_hints,
            options=bank,
        ),
    ]
    # The defaults row always, under its own name, even where an ablation above equals it.
    rows.append(
        MethodSpec(
            "liteembed (defaults)",
            "liteembed",
            defaults,
            hints,
            note="the settings file's defaults",
            options=_bank(defaults),
        )
    )
    if defaults.lambda_img > 0:
        rows += [
            MethodSpec(
                "liteembed (defaults) + look-alike images",
                "liteembed",
                defaults,
                hints,
                note="4 images of each named look-alike as negative images",
                options=_bank(defaults),
                lookalike_images=4,
            ),
            *_second_pass_rows(defaults, hints),
            MethodSpec(
                "liteembed (defaults), text stand-ins",
                "liteembed",
                defaults,
                hints,
                note="stand-in images made from words (benchmarks/text_standins.py), no bank",
                options=(("bank", "text"),),
            ),
            MethodSpec(
                "liteembed (defaults) w/o image evidence",
                "liteembed",
                defaults.with_(lambda_img=0.0, holdout_evidence=False),
                hints,
                note="no bank, no negative images",
            ),
        ]
    return rows


def _second_pass_rows(defaults: OptimizationConfig, hints: bool) -> list[MethodSpec]:
    """The defaults with the second pass (liteembed.reweigh) switched the other way: without it
    where the settings file has it, with it where the file has none."""
    if defaults.reweigh_kept > 0:
        name, config, note = (
            "liteembed (defaults) w/o second pass",
            defaults.with_(reweigh_kept=0.0),
            "no second pass for the words that take their evidence images",
        )
    else:
        name, config, note = (
            "liteembed (defaults) + second pass",
            defaults.with_(**SECOND_PASS),
            "words keeping < 85 % of their evidence learned again at weight 1",
        )
    return [
        MethodSpec(name, "liteembed", config, hints, note=note, options=_bank(defaults)),
        MethodSpec(
            f"{name} + look-alike images",
            "liteembed",
            config,
            hints,
            note=f"{note}; 4 images of each named look-alike as negative images",
            options=_bank(defaults),
            lookalike_images=4,
        ),
    ]


def _linear_probe_rows(chosen: dict[str, Any]) -> list[MethodSpec]:
    c = float(chosen.get("linear_probe_c", LINEAR_PROBE_C))
    return [
        MethodSpec(
            "linear-probe",
            "linear-probe",
            options=(("c", c),),
            note=method_entry("linear-probe").description,
        )
    ]


def _tip_adapter_rows(name: str) -> Any:
    def rows(chosen: dict[str, Any]) -> list[MethodSpec]:
        tuned = {k: float(chosen[f"tip_{k}"]) for k in ("alpha", "beta") if f"tip_{k}" in chosen}
        note = method_entry(name).description + (
            f"; alpha {tuned['alpha']:g}, beta {tuned['beta']:g} (validation)"
            if len(tuned) == 2
            else "; published alpha, beta"
        )
        return [MethodSpec(name, name, options=tuple(tuned.items()), note=note)]

    return rows


_ROW_SETTINGS = {
    "tip-adapter": _tip_adapter_rows("tip-adapter"),
    "tip-adapter (held-out cache)": _tip_adapter_rows("tip-adapter (held-out cache)"),
    "textual-inversion": _textual_inversion_rows,
    "liteembed": _liteembed_rows,
    "linear-probe": _linear_probe_rows,
}


def defaults_row(chosen: dict[str, Any], methods: Sequence[MethodSpec]) -> str:
    defaults = config_from(chosen["defaults"])
    hints = bool(chosen.get("use_hints", False))
    if any(spec.name == "liteembed (defaults)" for spec in methods):
        return "liteembed (defaults)"
    for spec in methods:
        if spec.config is not None and spec.config == defaults and spec.use_hints == hints:
            return spec.name
    return "liteembed (defaults)"


# ------------------------------------------------------------------ running


def run_benchmark(
    backend: Any,
    vocabulary: Any,
    task: Task,
    methods: Sequence[MethodSpec],
    shots: Sequence[int],
    draws: int,
    *,
    hide_heldout_names: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """{method: {K: [Outcome per draw]}} plus the task's description, as plain JSON data."""
    ctx = Context.build(backend, task, hide_heldout_names=hide_heldout_names)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {m.name: {} for m in methods}
    skipped = [k for k in shots if k > task.max_shots]
    usable = [k for k in shots if k <= task.max_shots]
    for k in usable:
        draw_list = [(d, task.draw(d)) for d in range(draws)]
        for spec in methods:
            started = time.perf_counter()
            outcomes = evaluate(spec, ctx, backend, vocabulary, draw_list, k)
            results[spec.name][str(k)] = [o.as_dict() for o in outcomes]
            hm = mean_std([o.hm for o in outcomes])
            log(
                f"K={k:<2} {spec.name:<30} HM {100 * hm[0]:5.1f} ± {100 * hm[1]:4.1f}"
                f"  ({time.perf_counter() - started:.1f}s)"
            )
    return {
        "task": {
            "name": task.name,
            "base": task.base,
            "heldout": task.heldout,
            "lookalikes": {n: list(b) for n, b in task.lookalikes.items()},
            **task.info,
        },
        "shots": usable,
        "skipped_shots": skipped,
        "draws": draws,
        "hide_heldout_names": hide_heldout_names,
        "base_before": ctx.base_before,
        "methods": [
            {
                "name": m.name,
                "method": m.method,
                "plug_and_play": m.plug_and_play,
                "use_hints": m.use_hints,
                "note": m.note,
                "config": m.config.to_dict() if m.config else None,
            }
            for m in methods
        ],
        "results": results,
    }


def single_class_seconds(
    backend: Any, vocabulary: Any, task: Task, config: OptimizationConfig, k: int = 4
) -> float:
    """Latency of adding one class alone (what a user of the service waits for), K shots."""
    name = task.heldout[0]
    started = time.perf_counter()
    learn_classes(
        backend,
        vocabulary,
        [ClassRequest(name, task.draw(0).shots(name, k))],
        config=config,
        seed=0,
    )
    return time.perf_counter() - started


# ------------------------------------------------------------------ command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="liteembed-mini-v2", help="open_clip model name")
    p.add_argument(
        "--pretrained", default="default", help="open_clip tag, checkpoint path, or 'random'"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--folder",
        type=Path,
        help="image folder (one subfolder per class); default: synthetic world",
    )
    p.add_argument("--heldout", nargs="+", default=[], help="held-out classes of --folder")
    p.add_argument(
        "--split",
        default="test_heldout",
        choices=list(SPLITS),
        help="synthetic world: which held-out classes (test by default)",
    )
    p.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS))
    p.add_argument("--seeds", type=int, default=MIN_DRAWS, help="support draws per K")
    p.add_argument(
        "--mine-heldout-names",
        action="store_true",
        help="let the held-out names be mined as vocabulary negatives (off: hidden)",
    )
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--methods", nargs="+", help="only these method names")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a settings file (benchmarks/tune.py's chosen_config.json, or one in "
        "benchmarks/results/configs/); default: the engine's defaults for the model",
    )
    p.add_argument("--cache-dir", type=Path, default=Path(".liteembed-cache"))
    p.add_argument("--max-words", type=int, default=None, help="cap a BPE vocabulary (tests)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--prefix", default="rare_classes", help="output file stem")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    backend = load_backend(args.model, args.pretrained, device=args.device)
    vocabulary = load_vocabulary(backend, args.cache_dir, max_words=args.max_words)
    max_shots = max(SUPPORT_POOL, *args.shots)
    if args.folder:
        task = folder_task(
            backend,
            args.folder,
            args.heldout,
            test_per_class=args.test_per_class,
            max_shots=max_shots,
        )
    else:
        task = world_task(
            backend, args.split, test_per_class=args.test_per_class, max_shots=max_shots
        )
    chosen = load_chosen(args.config, backend.model_id)
    methods = build_methods(chosen)
    if args.methods:
        methods = [m for m in methods if m.name in set(args.methods)]
    report = run_benchmark(
        backend,
        vocabulary,
        task,
        methods,
        args.shots,
        args.seeds,
        hide_heldout_names=not args.mine_heldout_names,
    )
    if "tip_alpha" in chosen and "tip_beta" in chosen:
        report["tip_adapter"] = (
            f"alpha = {chosen['tip_alpha']:g}, beta = {chosen['tip_beta']:g} (validation)"
        )
    report["linear_probe_c"] = float(chosen.get("linear_probe_c", LINEAR_PROBE_C))
    report["model"] = backend.model_id
    report["chosen_source"] = chosen.get("source", str(args.config))
    report["defaults_row"] = defaults_row(chosen, methods)
    report["single_class_seconds"] = single_class_seconds(
        backend, vocabulary, task, config_from(chosen["defaults"]), min(4, task.max_shots)
    )
    report["summary"] = summarise(report)
    report["wall_seconds"] = time.perf_counter() - started
    report["command"] = "python -m benchmarks.rare_classes " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.prefix
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, Path(f"{stem}.md"))
    if not args.no_plot:
        write_plot(report, Path(f"{stem}.png"))
    print(
        f"wrote {stem}.json/.md{'' if args.no_plot else '/.png'} in {report['wall_seconds']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
