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

Preparation and negative mining live in `liteembed.negatives`, the loss terms in
`liteembed.losses`; this module runs the batched Adam loop and assembles the results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from liteembed.backend import ClipBackend
from liteembed.config import OptimizationConfig, recorded_defaults
from liteembed.errors import OptimizationCancelled
from liteembed.losses import LossInputs, class_loss
from liteembed.names import validate_name
from liteembed.negatives import ClassProblem, ImageInput, prepare
from liteembed.scale import word_scale
from liteembed.vocab import Vocabulary

log = logging.getLogger(__name__)

_ADAM_EPS = 1e-8
_WARNED_MODELS: set[str] = set()


@dataclass(frozen=True)
class ClassRequest:
    name: str
    images: Sequence[ImageInput]
    hints: Sequence[str] = ()
    confusers: Sequence[str] = ()
    # Names whose words are never mined from the vocabulary for this class (as negatives or
    # anchor words), e.g. the other classes of an evaluation that must not see them.
    not_negatives: Sequence[str] = ()


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total: int
    loss: float
    exemplar_accuracy: float


ProgressCallback = Callable[[ProgressEvent], bool | None]


@dataclass
class LearnedClass:
    name: str
    model_id: str
    templates: list[str]
    token_embedding: torch.Tensor  # (token_dim,)
    text_feature: torch.Tensor  # (embed_dim,), normalised mean over templates
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Parameterisation:
    """v = mean + basis @ a with |a| <= box, or v = a when `basis` is None; |v| <= max_norm."""

    mean: torch.Tensor | None
    basis: torch.Tensor | None
    box: torch.Tensor | None
    max_norm: float | None = None

    def to_token(self, params: torch.Tensor) -> torch.Tensor:
        if self.basis is None or self.mean is None:
            return params
        return self.mean + params @ self.basis.T

    def from_token(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.basis is None or self.mean is None:
            return vectors.clone()
        return self.clamp((vectors - self.mean) @ self.basis)

    def clamp(self, params: torch.Tensor) -> torch.Tensor:
        """Into the box, then (if the word is longer than max_norm) scaled back to max_norm."""
        params = self._box(params)
        if self.max_norm is None:
            return params
        vector = self.to_token(params)
        norm = vector.norm(dim=-1, keepdim=True)
        if bool((norm <= self.max_norm).all()):
            return params
        vector = vector * torch.clamp(self.max_norm / norm.clamp_min(1e-12), max=1.0)
        if self.basis is None or self.mean is None:
            return vector
        return self._box((vector - self.mean) @ self.basis)

    def _box(self, params: torch.Tensor) -> torch.Tensor:
        if self.box is None:
            return params
        return torch.maximum(torch.minimum(params, self.box), -self.box)


@dataclass
class _RunResult:
    params: torch.Tensor
    curves: list[list[float]]
    steps_run: list[int]
    stop_reasons: list[str]
    holdout_margins: list[list[float]]
    holdout_accuracy: list[list[float]]


@dataclass
class _Batch:
    """What every phase of one `learn_classes` call shares."""

    backend: ClipBackend
    vocabulary: Vocabulary
    problems: list[ClassProblem]
    param: _Parameterisation
    config: OptimizationConfig
    init: torch.Tensor  # (classes, parameter width) starting parameters
    progress: ProgressCallback | None
    total_steps: int  # over all phases, for progress events
    lr: float  # the absolute Adam step
    peers: list[list[int]]  # per class: the other classes of the batch that are its negatives

    def negatives(self, i: int, current: torch.Tensor) -> torch.Tensor:
        """Class i's negatives: its mined ones, then its peers' current features."""
        own = self.problems[i].negatives
        if not self.peers[i]:
            return own
        return torch.cat([own, current[self.peers[i]]])

    def loss_inputs(
        self, i: int, text: torch.Tensor, include: torch.Tensor, current: torch.Tensor
    ) -> LossInputs:
        problem = self.problems[i]
        if problem.subspace is not None:
            mean, basis, k = problem.subspace
        else:
            mean = self.vocabulary.feature_mean.to(text.device)
            basis = self.vocabulary.feature_basis.to(text.device)
            k = self.config.k
        return LossInputs(
            text=text,
            exemplars=problem.exemplars[include],
            negatives=self.negatives(i, current),
            anchor=problem.anchor,
            feature_mean=mean,
            feature_basis=basis,
            k=k,
            scale=self.backend.logit_scale,
        )


def learn_class(
    backend: ClipBackend,
    vocabulary: Vocabulary,
    name: str,
    images: Sequence[ImageInput],
    *,
    hints: Sequence[str] = (),
    confusers: Sequence[str] = (),
    registered: Mapping[str, torch.Tensor] | None = None,
    config: OptimizationConfig | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> LearnedClass:
    request = ClassRequest(name=name, images=images, hints=hints, confusers=confusers)
    return learn_classes(
        backend,
        vocabulary,
        [request],
        registered=registered,
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
    config: OptimizationConfig | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> list[LearnedClass]:
    """Learn one new word per request, all in one batch; see the module docstring. Without a
    config, the model's recorded defaults (`liteembed.config.RECORDED_DEFAULTS`) are used."""
    _warn_without_recorded_defaults(backend.model_id)
    config = config or recorded_defaults(backend.model_id) or OptimizationConfig()
    if vocabulary.model_id != backend.model_id:
        raise ValueError(f"vocabulary of {vocabulary.model_id} used with {backend.model_id}")
    if not requests:
        return []
    started = time.perf_counter()
    names = [validate_name(r.name, field="class name") for r in requests]
    problems = prepare(backend, vocabulary, requests, names, registered or {}, config, seed)
    scale = word_scale(backend, vocabulary)
    param = _parameterisation(vocabulary, config, backend.device, scale.norm_cap(config))
    has_holdout = [p.holdout is not None for p in problems]
    if config.step_rule == "holdout":
        use_holdout, search_steps = any(has_holdout), config.max_steps
    elif config.step_rule == "holdout-margin":
        use_holdout, search_steps = all(has_holdout), config.steps
    else:
        use_holdout, search_steps = False, config.steps
    batch = _Batch(
        backend=backend,
        vocabulary=vocabulary,
        problems=problems,
        param=param,
        config=config,
        init=param.clamp(torch.stack([param.from_token(p.init_vector) for p in problems])),
        progress=progress,
        total_steps=2 * search_steps if use_holdout else config.steps,
        lr=scale.lr(config),
        peers=_peers(names) if config.batch_negatives else [[] for _ in names],
    )
    budgets = [config.steps] * len(problems)
    holdout_info: list[dict[str, Any]] = [{} for _ in problems]
    offset = 0
    if use_holdout:
        # Phase 1: exemplars left out of training pick the step count; no test data involved.
        if config.step_rule == "holdout":
            search, owners = _folds(batch)
            phase1 = _run(search, [search_steps] * len(owners), offset=0, holdout=True)
            held = [p.holdout is not None for p in search.problems]
            pooled = _pooled(phase1.holdout_accuracy, held)
            pooled_margin = _pooled(phase1.holdout_margins, held)
            rank = _holdout_rank(pooled, pooled_margin, config)
            best = max(range(len(pooled)), key=rank) if pooled else 0
            budgets = [max(best, 1)] * len(problems)
            for i, problem in enumerate(problems):
                holdout_info[i] = {
                    "rule": "pooled held-out accuracy",
                    "ties": config.holdout_ties,
                    "held_out_image": problem.holdout,
                    "held_out_images": [
                        q.holdout for q, o in zip(search.problems, owners, strict=True) if o == i
                    ],
                    "best_step": best,
                    "pooled_accuracy": _subsample(pooled, config.loss_curve_points),
                    "pooled_margin": _subsample(pooled_margin, config.loss_curve_points),
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
    result = _run(batch, budgets, offset=offset, holdout=False)
    return _finish(batch, result, holdout_info, time.perf_counter() - started)


def _warn_without_recorded_defaults(model_id: str) -> None:
    if recorded_defaults(model_id) is None and model_id not in _WARNED_MODELS:
        _WARNED_MODELS.add(model_id)
        log.warning(
            "no recorded optimisation defaults for %s: the defaults were validated on other "
            "models; check them on this one (benchmarks/tune.py)",
            model_id,
        )


def _folds(batch: _Batch) -> tuple[_Batch, list[int]]:
    """The hold-out search's batch: each class with `holdout_folds` > 1 is copied once per fold,
    each copy holding out another of its images (from its random one on, in turn), so that the
    pooled accuracy rests on more than one image per class. Returns the batch and, per row, the
    class it copies; a copy's peers are the first copies of its class's peers."""
    folds = batch.config.holdout_folds
    if folds <= 1:
        return batch, list(range(len(batch.problems)))
    rows: list[ClassProblem] = []
    owners: list[int] = []
    first: list[int] = []
    for i, problem in enumerate(batch.problems):
        first.append(len(rows))
        if problem.holdout is None:
            rows.append(problem)
            owners.append(i)
            continue
        count = int(problem.groups.max().item()) + 1
        for f in range(min(folds, count)):
            rows.append(replace(problem, holdout=(problem.holdout + f) % count))
            owners.append(i)
    peers = [[first[j] for j in batch.peers[owner]] for owner in owners]
    search = replace(batch, problems=rows, init=batch.init[owners], peers=peers)
    return search, owners


def _peers(names: Sequence[str]) -> list[list[int]]:
    """For each class, the batch's classes with another name (one name never fights itself)."""
    keys = [n.strip().lower() for n in names]
    return [[j for j, other in enumerate(keys) if other != key] for key in keys]


def _holdout_rank(
    accuracy: list[float], margins: list[float], config: OptimizationConfig
) -> Callable[[int], tuple[float, float]]:
    """The order in which the pooled rule prefers steps: higher held-out accuracy first; among
    equal accuracies the earliest step, or (`holdout_ties="margin"`) the higher pooled mean
    margin, which still moves when a dozen held-out images leave accuracy flat."""
    if config.holdout_ties == "margin":
        return lambda s: (accuracy[s], margins[s])
    return lambda s: (accuracy[s], -s)


def _pooled(curves: list[list[float]], include: list[bool]) -> list[float]:
    """Per step, the mean over the classes that held an image out."""
    rows = [c for c, keep in zip(curves, include, strict=True) if keep and c]
    if not rows:
        return []
    length = min(len(c) for c in rows)
    return [sum(c[s] for c in rows) / len(rows) for s in range(length)]


def _parameterisation(
    vocabulary: Vocabulary,
    config: OptimizationConfig,
    device: torch.device,
    max_norm: float | None,
) -> _Parameterisation:
    if config.parameterization == "token":
        return _Parameterisation(mean=None, basis=None, box=None, max_norm=max_norm)
    rank = max(vocabulary.token_rank, 1)
    basis = vocabulary.token_basis.to(device)
    std = vocabulary.token_std.to(device).clone()
    if config.pca_full_basis:
        # Directions the vocabulary does not span get the smallest spanned std: the word may move
        # there (confining it cost accuracy), but no further than along the vocabulary's weakest
        # axis.
        floor = (
            std[:rank][std[:rank] > 0].min()
            if bool((std[:rank] > 0).any())
            else std.new_tensor(1e-3)
        )
        std[rank:] = floor
    else:
        basis, std = basis[:, :rank], std[:rank]
    return _Parameterisation(
        mean=vocabulary.token_mean.to(device),
        basis=basis,
        box=config.kappa * std,
        max_norm=max_norm,
    )


def _run(batch: _Batch, budgets: list[int], *, offset: int, holdout: bool) -> _RunResult:
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
            templates, param.to_token(leaf), short_context=config.short_context
        )
        text = F.normalize(features.mean(dim=1), dim=-1)  # (b, E)
        current[rows] = text.detach().to(current.dtype)
        losses = []
        accuracies = []
        stop_now: list[int] = []
        for j, i in enumerate(rows):
            loss, margins = class_loss(batch.loss_inputs(i, text[j], includes[i], current), config)
            losses.append(loss)
            curves[i].append(float(loss.item()))
            accuracies.append(float((margins > 0).float().mean().item()))
            if holdout and problems[i].holdout is not None:
                held = problems[i].groups == problems[i].holdout
                with torch.no_grad():
                    margin = _margins(
                        problems[i].exemplars[held], text[j].detach(), batch.negatives(i, current)
                    )
                holdout_margins[i].append(float(margin.mean().item()))
                holdout_accuracy[i].append(float((margin > 0).float().mean().item()))
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
            _stop_holdout_search(batch, rows, active, reasons, holdout_margins, holdout_accuracy)
    return _RunResult(params, curves, steps_run, reasons, holdout_margins, holdout_accuracy)


def _stop_holdout_search(
    batch: _Batch,
    rows: list[int],
    active: list[bool],
    reasons: list[str],
    margins: list[list[float]],
    accuracy: list[list[float]],
) -> None:
    """Held-out quality has not improved for 2 * patience steps: more steps only overfit."""
    config = batch.config

    def stale(curve: list[float], rank: Callable[[int], Any] | None = None) -> bool:
        best = max(range(len(curve)), key=rank or (lambda s: (curve[s], -s)))
        return len(curve) - 1 - best >= 2 * config.patience and len(curve) > config.min_steps

    if config.step_rule == "holdout":
        include = [p.holdout is not None for p in batch.problems]
        pooled = _pooled(accuracy, include)
        if pooled and stale(pooled, _holdout_rank(pooled, _pooled(margins, include), config)):
            for i in rows:
                active[i] = False
                reasons[i] = "holdout"
        return
    for i in rows:
        if margins[i] and stale(margins[i]):
            active[i] = False
            reasons[i] = "holdout"


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
    batch: _Batch, result: _RunResult, holdout_info: list[dict[str, Any]], seconds: float
) -> list[LearnedClass]:
    backend, config, param = batch.backend, batch.config, batch.param
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
        learned.append(
            LearnedClass(
                name=problem.name,
                model_id=backend.model_id,
                templates=templates,
                token_embedding=tokens[i].detach().float().cpu(),
                text_feature=final[i].detach().float().cpu(),
                diagnostics=diagnostics,
            )
        )
    return learned
