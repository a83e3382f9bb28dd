"""The LiteEmbed optimisation loop (docs/method.md).

A new word v is optimised in the token-embedding space of the frozen text encoder so that the
prompt(s) holding it classify the exemplar images as the new class against mined hard negatives,
with optional coarse alignment to an anchor and fine separation from the negatives in the
word-feature PCA subspaces. Several classes are optimised in one batch: every class has its own
parameter row and Adam state, and the total loss is a sum of per-class losses. With
`batch_negatives` (the default) the classes of a batch are also each other's negatives, at their
current features each step, since they will all be registered together; without it a class's
result does not depend on which other classes share the batch.

The step size is in units of the vocabulary's typical token coordinate and the word's norm is
capped relative to the real words' (`liteembed.scale`); the step count is picked by the held-out
accuracy of one image per class, pooled over the batch (`step_rule`).

Preparation lives in `liteembed.problem` (mining in `liteembed.negatives`, image evidence in
`liteembed.evidence`), the loss terms in `liteembed.losses`, the word's parameterisation in
`liteembed.parameterisation`, the hold-out step rule in `liteembed.step_search` and the acceptance
threshold in `liteembed.threshold`; this module runs the batched Adam loop and assembles the
results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from liteembed.backend import ClipBackend
from liteembed.bank import ReferenceBank
from liteembed.batch import Batch, RunResult
from liteembed.config import OptimizationConfig, recorded_defaults
from liteembed.errors import OptimizationCancelled
from liteembed.losses import class_loss
from liteembed.names import validate_name
from liteembed.parameterisation import parameterisation
from liteembed.problem import prepare
from liteembed.requests import (
    ClassRequest,
    ImageData,
    LearnedClass,
    ProgressCallback,
    ProgressEvent,
    ProtectedClass,
)
from liteembed.reweigh import reweigh
from liteembed.scale import word_scale
from liteembed.step_search import (
    carry_final,
    fold_copies,
    held_out_means,
    held_out_similarities,
    holdout_rank,
    is_carried,
    kept_share,
    peers_of,
    read_carried,
    search_curves,
    stop_holdout_search,
)
from liteembed.threshold import class_threshold, noise_features
from liteembed.vocab import Vocabulary

log = logging.getLogger(__name__)

_ADAM_EPS = 1e-8
_WARNED_MODELS: set[str] = set()


def learn_class(
    backend: ClipBackend,
    vocabulary: Vocabulary,
    name: str,
    images: Sequence[ImageData],
    *,
    hints: Sequence[str] = (),
    confusers: Sequence[str] = (),
    negative_images: Sequence[ImageData] = (),
    registered: Mapping[str, torch.Tensor] | None = None,
    protected: Sequence[ProtectedClass] = (),
    bank: ReferenceBank | None = None,
    config: OptimizationConfig | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> LearnedClass:
    request = ClassRequest(
        name=name,
        images=images,
        hints=hints,
        confusers=confusers,
        negative_images=negative_images,
    )
    return learn_classes(
        backend,
        vocabulary,
        [request],
        registered=registered,
        protected=protected,
        bank=bank,
        config=config,
        seed=seed,
        progress=progress,
    )[0]


def learn_classes(
    backend: ClipBackend,
    vocabulary: Vocabulary,
    requests: Sequence[ClassRequest],
    *,
    registered: Mapping[str, torch.Tensor] | None = None,
    protected: Sequence[ProtectedClass] = (),
    bank: ReferenceBank | None = None,
    config: OptimizationConfig | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> list[LearnedClass]:
    """Learn one new word per request, all in one batch; see the module docstring. Without a
    config, the model's recorded defaults (`liteembed.config.RECORDED_DEFAULTS`) are used.

    `registered` maps the names of classes already in use to their text features (negatives);
    `protected` gives such classes with their exemplars' image features, and `bank` images of
    vocabulary words: the words learned here must not win those images (liteembed.evidence)."""
    _warn_without_recorded_defaults(backend.model_id)
    config = config or recorded_defaults(backend.model_id) or OptimizationConfig()
    if vocabulary.model_id != backend.model_id:
        raise ValueError(f"vocabulary of {vocabulary.model_id} used with {backend.model_id}")
    if not requests:
        return []
    started = time.perf_counter()
    names = [validate_name(r.name, field="class name") for r in requests]
    problems = prepare(
        backend,
        vocabulary,
        requests,
        names,
        registered or {},
        config,
        seed,
        protected=protected,
        bank=bank,
    )
    scale = word_scale(backend, vocabulary)
    param = parameterisation(vocabulary, config, backend.device, scale.norm_cap(config))
    has_holdout = [p.holdout is not None for p in problems]
    if config.step_rule == "holdout":
        use_holdout, search_steps = any(has_holdout), config.max_steps
    elif config.step_rule == "holdout-margin":
        use_holdout, search_steps = all(has_holdout), config.steps
    else:
        use_holdout, search_steps = False, config.steps
    # The pooled rule's final run rides along with its search (`_carry_final`); early stopping
    # on the exemplars can end a final run before its budget, so it keeps a run of its own.
    carried = use_holdout and config.step_rule == "holdout" and not config.early_stopping
    batch = Batch(
        backend=backend,
        vocabulary=vocabulary,
        problems=problems,
        param=param,
        config=config,
        init=param.clamp(torch.stack([param.from_token(p.init_vector) for p in problems])),
        progress=progress,
        total_steps=search_steps * (1 if carried else 2) if use_holdout else config.steps,
        lr=scale.lr(config),
        peers=peers_of(names) if config.batch_negatives else [[] for _ in names],
    )
    budgets = [config.steps] * len(problems)
    holdout_info: list[dict[str, Any]] = [{} for _ in problems]
    # Each class's unseen-image similarities (from the step search), for its threshold.
    positives: list[torch.Tensor | None] = [None] * len(problems)
    offset = 0
    carried_result: RunResult | None = None
    if use_holdout:
        # Phase 1: exemplars left out of training pick the step count; no test data involved.
        if config.step_rule == "holdout":
            search, owners = fold_copies(batch)
            # The final run rides along: its trajectory does not depend on the budget, so its
            # state after the chosen step is what a second run of that many steps would return.
            search = carry_final(search, batch) if carried else search
            phase1 = _run(search, [search_steps] * len(search.problems), offset=0, holdout=True)
            pooled, pooled_margin, pooled_kept = search_curves(
                search, phase1.holdout_accuracy, phase1.holdout_margins, phase1.evidence_kept
            )
            rank = holdout_rank(pooled, pooled_margin, config)
            best = max(range(len(pooled)), key=rank) if pooled else 0
            budgets = [max(best, 1)] * len(problems)
            positives = held_out_similarities(search, owners, phase1, best)
            if search.final_from is not None:
                carried_result = read_carried(search, phase1, budgets)
            own_accuracy = held_out_means(phase1.holdout_accuracy, owners, best, len(problems))
            own_margin = held_out_means(phase1.holdout_margins, owners, best, len(problems))
            for i, problem in enumerate(problems):
                holdout_info[i] = {
                    "rule": "pooled held-out accuracy",
                    # The class's own held-out images at the chosen step (None: none held out).
                    "accuracy": own_accuracy[i],
                    "margin": own_margin[i],
                    "ties": config.holdout_ties,
                    "held_out_image": problem.holdout,
                    "held_out_images": [
                        q.holdout
                        for q, o in zip(search.problems[: len(owners)], owners, strict=True)
                        if o == i
                    ],
                    "best_step": best,
                    "pooled_accuracy": _subsample(pooled, config.loss_curve_points),
                    "pooled_margin": _subsample(pooled_margin, config.loss_curve_points),
                    "pooled_evidence_kept": _subsample(pooled_kept, config.loss_curve_points),
                }
        else:
            phase1 = _run(batch, [search_steps] * len(problems), offset=0, holdout=True)
            for i, margins in enumerate(phase1.holdout_margins):
                best = max(range(len(margins)), key=lambda s: (margins[s], -s)) if margins else 0
                budgets[i] = max(best, 1)
                holdout_info[i] = {
                    "rule": "held-out margin",
                    "held_out_image": problems[i].holdout,
                    "best_step": best,
                    "held_out_margins": _subsample(margins, config.loss_curve_points),
                }
        offset = search_steps
    result = carried_result or _run(batch, budgets, offset=offset, holdout=False)
    learned = _finish(batch, result, holdout_info, positives, time.perf_counter() - started)

    def learn_again(
        subset: Sequence[ClassRequest],
        stronger: OptimizationConfig,
        others: Mapping[str, torch.Tensor],
    ) -> list[LearnedClass]:
        return learn_classes(
            backend,
            vocabulary,
            subset,
            registered={**(registered or {}), **others},
            protected=protected,
            bank=bank,
            config=stronger,
            seed=seed,
            progress=progress,
        )

    return reweigh(requests, learned, config, learn_again)


def _warn_without_recorded_defaults(model_id: str) -> None:
    if recorded_defaults(model_id) is None and model_id not in _WARNED_MODELS:
        _WARNED_MODELS.add(model_id)
        log.warning(
            "no recorded optimisation defaults for %s: the defaults were validated on other "
            "models; check them on this one (benchmarks/tune.py)",
            model_id,
        )


def _run(batch: Batch, budgets: list[int], *, offset: int, holdout: bool) -> RunResult:
    """Batched Adam over the classes' rows, each with its own step budget; with `holdout`, each
    class's held-out image is left out of its loss and its accuracy and margin recorded per
    step (against its negatives, peers included)."""
    problems, config, param, backend = batch.problems, batch.config, batch.param, batch.backend
    count = len(problems)
    params = batch.init.detach().clone()
    first_moment = torch.zeros_like(params)
    second_moment = torch.zeros_like(params)
    beta1, beta2 = config.betas
    curves: list[list[float]] = [[] for _ in problems]
    holdout_margins: list[list[float]] = [[] for _ in problems]
    holdout_accuracy: list[list[float]] = [[] for _ in problems]
    holdout_similarity: list[list[float]] = [[] for _ in problems]
    evidence_kept: list[list[float]] = [[] for _ in problems]
    snapshots: list[torch.Tensor] = []
    steps_run = [0] * count
    reasons = ["max_steps"] * count
    active = [budgets[i] > 0 for i in range(count)]
    # The latest text feature of every class: what its peers see as a negative.
    current = torch.zeros(count, backend.embed_dim, device=backend.device)
    includes = []
    for problem in problems:
        include = torch.ones_like(problem.groups, dtype=torch.bool)
        if holdout and problem.holdout is not None:
            include = problem.groups != problem.holdout
        includes.append(include)
    templates = list(config.templates)
    for step in range(max(budgets)):
        rows = [i for i in range(count) if active[i] and steps_run[i] < budgets[i]]
        for i in range(count):
            if active[i] and steps_run[i] >= budgets[i]:
                active[i] = False
        if not rows:
            break
        leaf = params[rows].clone().requires_grad_(True)
        features = backend.encode_with_token(
            templates,
            param.to_token(leaf),
            short_context=config.short_context,
            precision=config.step_precision,
        )
        text = F.normalize(features.mean(dim=1), dim=-1)  # (b, E)
        current[rows] = text.detach().to(current.dtype)
        losses = []
        accuracies = []
        stop_now: list[int] = []
        for j, i in enumerate(rows):
            inputs = batch.loss_inputs(i, text[j], includes[i], current)
            loss, margins = class_loss(inputs, config)
            losses.append(loss)
            curves[i].append(float(loss.item()))
            accuracies.append(float((margins > 0).float().mean().item()))
            if holdout and problems[i].holdout is not None:
                held = problems[i].groups == problems[i].holdout
                with torch.no_grad():
                    margin = _margins(
                        problems[i].exemplars[held], text[j].detach(), batch.negatives(i, current)
                    )
                    similarity = problems[i].exemplars[held] @ text[j].detach()
                holdout_margins[i].append(float(margin.mean().item()))
                holdout_accuracy[i].append(float((margin > 0).float().mean().item()))
                holdout_similarity[i].append(float(similarity.mean().item()))
            if holdout and not is_carried(batch, i):
                kept = kept_share(inputs)
                if kept is not None:
                    evidence_kept[i].append(kept)
            elif not holdout and config.early_stopping and _converged(curves[i], margins, config):
                stop_now.append(j)
        # Sum, not mean: each class gets exactly the gradient of its own loss.
        torch.stack(losses).sum().backward()
        grad = leaf.grad.detach()
        with torch.no_grad():
            for j, i in enumerate(rows):
                if j in stop_now:
                    # Stop before updating: the returned word is the state that met the rule.
                    active[i] = False
                    reasons[i] = "converged"
                    continue
                steps_run[i] += 1
                t = steps_run[i]
                first_moment[i] = beta1 * first_moment[i] + (1 - beta1) * grad[j]
                second_moment[i] = beta2 * second_moment[i] + (1 - beta2) * grad[j] ** 2
                m_hat = first_moment[i] / (1 - beta1**t)
                v_hat = second_moment[i] / (1 - beta2**t)
                params[i] = param.clamp(params[i] - batch.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS))
            if batch.final_from is not None:
                snapshots.append(params[batch.final_from :].clone())
        if batch.progress is not None:
            event = ProgressEvent(
                step=offset + step + 1,
                total=batch.total_steps,
                loss=float(sum(curves[i][-1] for i in rows) / len(rows)),
                exemplar_accuracy=float(sum(accuracies) / len(accuracies)),
            )
            if batch.progress(event):
                raise OptimizationCancelled(
                    f"cancelled at step {event.step} of {batch.total_steps}"
                )
        if holdout:
            stop_holdout_search(
                batch, rows, active, reasons, holdout_margins, holdout_accuracy, evidence_kept
            )
    return RunResult(
        params,
        curves,
        steps_run,
        reasons,
        holdout_margins,
        holdout_accuracy,
        holdout_similarity,
        evidence_kept,
        snapshots,
    )


def _margins(exemplars: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    positive = exemplars @ text
    if not negatives.shape[0]:
        return positive
    return positive - (exemplars @ negatives.T).max(dim=1).values


def _converged(curve: list[float], margins: torch.Tensor, config: OptimizationConfig) -> bool:
    if len(curve) <= max(config.min_steps, config.patience):
        return False
    if not bool((margins >= config.stop_margin).all()):
        return False
    before, now = curve[-1 - config.patience], curve[-1]
    return before - now <= config.flat_tolerance * abs(before)


def _subsample(values: list[float], points: int) -> list[float]:
    if len(values) <= points:
        return [round(v, 6) for v in values]
    stride = len(values) / points
    return [round(values[int(i * stride)], 6) for i in range(points - 1)] + [round(values[-1], 6)]


def _finish(
    batch: Batch,
    result: RunResult,
    holdout_info: list[dict[str, Any]],
    positives: list[torch.Tensor | None],
    seconds: float,
) -> list[LearnedClass]:
    backend, config, param = batch.backend, batch.config, batch.param
    noise = noise_features(backend).to(backend.device).float()
    templates = list(config.templates)
    with torch.no_grad():
        tokens = param.to_token(result.params)
        features = backend.encode_with_token(templates, tokens, short_context=config.short_context)
        final = F.normalize(features.mean(dim=1), dim=-1)
        start_features = backend.encode_with_token(
            templates, param.to_token(batch.init), short_context=config.short_context
        )
        initial = F.normalize(start_features.mean(dim=1), dim=-1)
    learned = []
    for i, problem in enumerate(batch.problems):
        margins = _margins(problem.exemplars, final[i], batch.negatives(i, final))
        negatives = [
            {"name": n, "source": s}
            for n, s in zip(problem.negative_names, problem.negative_sources, strict=True)
        ] + [{"name": batch.problems[j].name, "source": "batch"} for j in batch.peers[i]]
        diagnostics: dict[str, Any] = {
            "loss_curve": _subsample(result.curves[i], config.loss_curve_points),
            "exemplar_accuracy": float((margins > 0).float().mean().item()),
            "final_margins": [round(float(m), 6) for m in margins.tolist()],
            "negatives": negatives,
            "anchor_words": problem.anchor_words,
            "init_from": problem.init_from,
            "steps_run": result.steps_run[i],
            "stop_reason": result.stop_reasons[i],
            "prototype_similarity_initial": float(initial[i] @ problem.prototype),
            "prototype_similarity_final": float(final[i] @ problem.prototype),
            "views": int(problem.exemplars.shape[0]),
            "parameterization": config.parameterization,
            "lr": batch.lr,
            "word_norm": float(tokens[i].norm().item()),
            "norm_cap": param.max_norm,
            "seconds": round(seconds, 4),
            "batch_size": len(batch.problems),
            "config": config.to_dict(),
        }
        if holdout_info[i]:
            diagnostics["holdout"] = holdout_info[i]
        threshold, diagnostics["threshold"] = class_threshold(
            text=final[i],
            originals=problem.originals,
            evidence=problem.evidence.features,
            held_out=positives[i],
            noise=noise,
            config=config,
        )
        if problem.evidence.groups:
            inputs = batch.loss_inputs(
                i, final[i], torch.ones_like(problem.groups, dtype=torch.bool), final
            )
            diagnostics["evidence"] = {
                "groups": problem.evidence.groups,
                "kept": kept_share(inputs),
            }
        learned.append(
            LearnedClass(
                name=problem.name,
                model_id=backend.model_id,
                templates=templates,
                token_embedding=tokens[i].detach().float().cpu(),
                text_feature=final[i].detach().float().cpu(),
                threshold=threshold,
                exemplar_features=problem.originals.detach().float().cpu(),
                diagnostics=diagnostics,
            )
        )
    return learned
