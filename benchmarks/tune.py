"""The validation search that sets LiteEmbed's defaults.

Everything here runs on the VALIDATION held-out classes of the synthetic world (their own
gallery images and support draws); the test held-out classes are never touched. Order, following
the earlier ablation's pitfalls:

1. the step budget / early-stopping rule and the learning rate of plain textual inversion (TI)
   first, so that no regulariser is credited for merely slowing overfitting; a rule (no fixed
   budget) is kept unless the best fixed budget beats it by more than one standard error;
2. each LiteEmbed part on top of that budget, one at a time: coarse alignment (k, lambda_c,
   anchor = nearest words or the category hint), fine separation (lambda_f, margin), the PCA box
   (kappa, basis), then the hard negatives (m), templates and augmentation;
3. a part becomes a default only if its paired per-draw HM difference to the current default is
   positive by more than one standard error; "liteembed (full)" takes each part's best setting
   even when it was not accepted (it is the paper's method, the ablations remove one part each);
4. a check of the chosen budget and defaults at K=1 and K=16.

The grids are small on purpose: the whole search must run in minutes on a shared 2-core CPU.
Budgets longer than 50 steps (100, 200) are not in the grid: validation HM fell from 10 to 25 to
50 steps already.

    python -m benchmarks.tune --out benchmarks/results

The stages run in order on shared state and read top to bottom here; the memoised evaluations
and the acceptance rule are in benchmarks/tune_records.py, the markdown summary in
benchmarks/tune_report.py.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.data import Task, world_task
from benchmarks.methods import MethodSpec
from benchmarks.metrics import mean_std
from benchmarks.tune_records import BASE, Record, Search, best_of, better, changes_from_base
from benchmarks.tune_report import write_summary
from liteembed import OptimizationConfig, load_backend, load_vocabulary

RESULTS_DIR = Path(__file__).parent / "results"
# holdout_folds large enough that every support image is held out in turn
MAX_FOLDS = 16


def search(
    backend: Any,
    vocabulary: Any,
    task: Task,
    *,
    draws_k4: int = 8,
    draws_other: int = 4,
    quick: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    s = Search(backend, vocabulary, task, {4: draws_k4, 1: draws_other, 16: draws_other}, log)
    decisions: list[str] = []

    # 0. Reference points and the linear probe's fixed C (the probe is not LiteEmbed, but its one
    # hyperparameter is fixed here too, on the same validation classes).
    s.fixed("baselines", MethodSpec("image-prototype", "image-prototype"))
    # Tip-Adapter's alpha (cache weight) and beta (sharpness) with the model's own logit scale.
    tip = {
        (alpha, beta): s.fixed(
            "baselines",
            MethodSpec(
                f"tip-adapter alpha={alpha:g} beta={beta:g}",
                "tip-adapter",
                options=(("alpha", alpha), ("beta", beta)),
            ),
        )
        for alpha in ((0.5, 2.0) if quick else (0.25, 0.5, 1.0, 2.0, 4.0))
        for beta in ((1.0, 5.5) if quick else (1.0, 3.0, 5.5, 8.0))
    }
    tip_alpha, tip_beta = max(tip, key=lambda ab: tip[ab].mean_hm)
    decisions.append(
        f"Tip-Adapter alpha = {tip_alpha:g}, beta = {tip_beta:g} (best validation HM at K=4, "
        "model's logit scale)"
    )
    probe = {
        c: s.fixed(
            "baselines",
            MethodSpec(f"linear-probe C={c:g}", "linear-probe", options=(("c", c),)),
        )
        for c in ((1.0, 10.0) if quick else (1.0, 10.0, 100.0))
    }
    linear_probe_c = max(probe, key=lambda c: probe[c].mean_hm)
    decisions.append(f"linear probe C = {linear_probe_c:g} (best validation HM at K=4)")

    # 1. Step budget of plain TI: fixed budgets without early stopping, the engine's
    # convergence rule, and the hold-one-shot-out rule.
    ti = BASE.with_(lambda_c=0.0, lambda_f=0.0, parameterization="token")
    budgets = (10, 25, 50) if quick else (5, 10, 25, 50)
    budget_runs = [
        s.run(
            "1-steps",
            f"TI steps={n} no-early-stop",
            ti.with_(steps=n, step_rule="fixed", early_stopping=False),
        )
        for n in budgets
    ]
    # The rules' `steps` is also the cap, and the whole budget where the hold-out rule cannot
    # run (K = 1), so each rule is tried at two caps.
    caps = (50,)
    rule_runs = (
        [
            s.run(
                "1-steps",
                f"TI steps={cap} early-stop (convergence)",
                ti.with_(steps=cap, step_rule="fixed", early_stopping=True),
            )
            for cap in caps
        ]
        + [
            s.run(
                "1-steps",
                f"TI steps={cap} holdout-margin (per class)",
                ti.with_(steps=cap, early_stopping=False, step_rule="holdout-margin"),
            )
            for cap in caps
        ]
        + [
            s.run(
                "1-steps",
                f"TI max_steps={cap} holdout (pooled accuracy)",
                ti.with_(max_steps=cap, early_stopping=False, step_rule="holdout"),
            )
            for cap in caps
        ]
        + [
            s.run(
                "1-steps",
                f"TI max_steps={cap} holdout (pooled accuracy, {ties} ties, {label})",
                ti.with_(
                    max_steps=cap,
                    early_stopping=False,
                    step_rule="holdout",
                    holdout_ties=ties,
                    holdout_folds=folds,
                ),
            )
            for cap in caps
            for ties, folds, label in (
                ("margin", 1, "one image"),
                ("earliest", MAX_FOLDS, "every image in turn"),
                ("margin", MAX_FOLDS, "every image in turn"),
            )
        ]
    )
    # A rule that needs no budget travels to other models; a fixed budget is taken only when it
    # beats the best rule by more than one standard error (paired).
    best_rule, best_fixed = best_of(rule_runs), best_of(budget_runs)
    fixed_wins, diff = better(best_fixed, best_rule)
    current = best_fixed if fixed_wins else best_rule
    current_cfg = _config_of(current, ti)
    decisions.append(
        f"step rule: {current.label} (best rule '{best_rule.label}' vs best fixed budget "
        f"'{best_fixed.label}': fixed {100 * diff['mean']:+.2f} ± {100 * diff['se']:.2f} HM)"
    )
    lr_runs = [
        s.run("1-lr", f"TI lr={lr}", current_cfg.with_(lr=lr))
        for lr in (0.3 * current_cfg.lr, 3 * current_cfg.lr)
    ]
    for run in lr_runs:
        ok, diff = better(run, current)
        if ok and run.mean_hm > current.mean_hm:
            current, current_cfg = run, _config_of(run, ti)
    decisions.append(f"learning rate: {current_cfg.lr}")
    ti_ref = current
    ti_cfg = current_cfg

    # 2. Each part on its own, on top of the tuned TI.
    coarse_runs = []
    for hints in (False, True):
        for k in (4,) if quick else (4, 8):
            for lam in (0.3,) if quick else (0.3, 1.0, 3.0):
                coarse_runs.append(
                    s.run(
                        "2-coarse",
                        f"coarse k={k} lambda_c={lam} anchor={'hint' if hints else 'words'}",
                        ti_cfg.with_(k=k, lambda_c=lam),
                        hints=hints,
                    )
                )
    fine_runs = []
    for k in (4,):
        for lam in (0.3,) if quick else (0.3, 1.0):
            for margin in (0.0, 0.3):
                fine_runs.append(
                    s.run(
                        "2-fine",
                        f"fine k={k} lambda_f={lam} margin={margin}",
                        ti_cfg.with_(k=k, lambda_f=lam, fine_margin=margin),
                    )
                )
    box_runs = []
    for kappa in (3.0,) if quick else (1.0, 3.0):
        for full_basis in (True, False):
            box_runs.append(
                s.run(
                    "2-box",
                    f"PCA box kappa={kappa} full_basis={full_basis}",
                    ti_cfg.with_(parameterization="pca", kappa=kappa, pca_full_basis=full_basis),
                )
            )
    neg_runs = [
        s.run("2-negatives", f"negatives m={m}", ti_cfg.with_(m=m))
        for m in ((4,) if quick else (0, 4, 16))
    ]
    tmpl_runs = [
        s.run(
            "2-templates",
            "templates x3",
            ti_cfg.with_(templates=("a photo of a {}.", "a {}.", "a drawing of a {}.")),
        )
    ]
    aug_runs = (
        [] if quick else [s.run("2-augment", "augment views=2", ti_cfg.with_(augment_views=2))]
    )

    best_coarse, best_fine, best_box = best_of(coarse_runs), best_of(fine_runs), best_of(box_runs)
    defaults_cfg, defaults_ref, use_hints = ti_cfg, ti_ref, False
    accepted: dict[str, Record] = {}
    for part, runs in (
        ("coarse", coarse_runs),
        ("fine", fine_runs),
        ("box", box_runs),
        ("negatives", neg_runs),
        ("templates", tmpl_runs),
        ("augment", aug_runs),
    ):
        if not runs:
            continue
        top = best_of(runs)
        ok, diff = better(top, ti_ref)
        decisions.append(
            f"{part}: best '{top.label}' ΔHM {100 * diff['mean']:+.2f} ± {100 * diff['se']:.2f} "
            f"(SE) vs tuned TI -> {'ACCEPTED' if ok else 'not accepted'}"
        )
        if ok:
            accepted[part] = top

    # 3. Combine the accepted parts; drop any whose removal does not hurt (paired).
    if accepted:
        combined = ti_cfg
        hints = False
        for record in accepted.values():
            combined = _merge(combined, record, ti_cfg)
            hints = hints or record.use_hints
        combo = s.run("3-combine", "accepted parts combined", combined, hints=hints)
        ok, diff = better(combo, ti_ref)
        decisions.append(
            f"combination of {sorted(accepted)}: ΔHM {100 * diff['mean']:+.2f} ± "
            f"{100 * diff['se']:.2f} vs tuned TI -> {'kept' if ok else 'rejected'}"
        )
        if ok:
            defaults_cfg, defaults_ref, use_hints = combined, combo, hints
        else:
            top_part = max(accepted.values(), key=lambda r: r.mean_hm)
            defaults_cfg, defaults_ref, use_hints = (
                _merge(ti_cfg, top_part, ti_cfg),
                top_part,
                top_part.use_hints,
            )
            decisions.append(f"kept only the single best accepted part: {top_part.label}")

    # The paper's full method with each part at its best validation setting.
    full_cfg = ti_cfg
    for record in (best_coarse, best_fine, best_box):
        full_cfg = _merge(full_cfg, record, ti_cfg)
    if best_coarse.changes.get("k") != best_fine.changes.get("k"):
        # one k serves both terms; take the coarse term's (k defines the coarse subspace)
        full_cfg = full_cfg.with_(k=_config_of(best_coarse, ti_cfg).k)
    full_hints = best_coarse.use_hints
    full = s.run("3-full", "full (best of each part)", full_cfg, hints=full_hints)

    # 4. Does the budget hold at other K? TI budgets and the defaults at K=1 and K=16.
    for k in (1, 16):
        for n in (10, 25):
            s.run(
                "4-other-K",
                f"TI steps={n} no-early-stop",
                ti.with_(steps=n, step_rule="fixed", early_stopping=False),
                k=k,
            )
        s.run("4-other-K", "tuned TI", ti_cfg, k=k)
        s.run("4-other-K", "chosen defaults", defaults_cfg, hints=use_hints, k=k)
        s.run("4-other-K", "full", full_cfg, hints=full_hints, k=k)

    return {
        "task": {"name": task.name, "base": len(task.base), "heldout": task.heldout, **task.info},
        "draws": {str(k): v for k, v in s.draws.items()},
        "decisions": decisions,
        "linear_probe_c": linear_probe_c,
        "tip_alpha": tip_alpha,
        "tip_beta": tip_beta,
        "chosen": {
            "defaults": defaults_cfg.to_dict(),
            "full": full_cfg.to_dict(),
            "use_hints": use_hints,
            "full_use_hints": full_hints,
            "defaults_changes": changes_from_base(defaults_cfg),
            "full_changes": changes_from_base(full_cfg),
            "defaults_val_hm": mean_std(defaults_ref.hm),
            "full_val_hm": mean_std(full.hm),
            "ti_val_hm": mean_std(ti_ref.hm),
        },
        "records": [r.as_dict(ti_ref if r.k == ti_ref.k else None) for r in s.records],
    }


def _config_of(record: Record, fallback: OptimizationConfig) -> OptimizationConfig:
    return record.config if record.config is not None else fallback


def _merge(
    config: OptimizationConfig, record: Record, reference: OptimizationConfig
) -> OptimizationConfig:
    """`config` plus only what `record` changed relative to `reference` (its part's switches),
    so merging the fine-separation winner does not switch the coarse term back off."""
    if record.config is None:
        return config
    ref, new = reference.to_dict(), record.config.to_dict()
    part = {k: tuple(v) if isinstance(v, list) else v for k, v in new.items() if ref[k] != v}
    return config.with_(**part)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="liteembed-mini-v2")
    p.add_argument("--pretrained", default="default")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", type=Path, default=Path(".liteembed-cache"))
    p.add_argument("--max-words", type=int, default=None)
    p.add_argument("--draws", type=int, default=6, help="validation draws at K=4")
    p.add_argument("--draws-other", type=int, default=3, help="validation draws at K=1 and K=16")
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="a much smaller grid (smoke tests)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    backend = load_backend(args.model, args.pretrained, device=args.device)
    vocabulary = load_vocabulary(backend, args.cache_dir, max_words=args.max_words)
    task = world_task(backend, "val_heldout", test_per_class=args.test_per_class, max_shots=16)
    result = search(
        backend,
        vocabulary,
        task,
        draws_k4=args.draws,
        draws_other=args.draws_other,
        quick=args.quick,
    )
    result["model"] = backend.model_id
    result["wall_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validation_search.json").write_text(json.dumps(result, indent=1))
    write_summary(result, args.out / "validation_search.md")
    chosen = {
        "defaults": result["chosen"]["defaults"],
        "full": result["chosen"]["full"],
        "use_hints": result["chosen"]["use_hints"],
        "full_use_hints": result["chosen"]["full_use_hints"],
        "linear_probe_c": result["linear_probe_c"],
        "tip_alpha": result["tip_alpha"],
        "tip_beta": result["tip_beta"],
        "source": f"validation search of {time.strftime('%Y-%m-%d')} on {backend.model_id} "
        "(benchmarks/results/validation_search.md)",
    }
    (args.out / "chosen_config.json").write_text(json.dumps(chosen, indent=1))
    print(
        f"wrote validation_search.json/.md and chosen_config.json in {result['wall_seconds']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
