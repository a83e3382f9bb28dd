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
from liteembed.bank import ReferenceBank
from liteembed.config import OptimizationConfig, recorded_defaults
from liteembed.errors import OptimizationCancelled
from liteembed.losses import LossInputs, class_loss, evidence_logits
from liteembed.names import validate_name
from liteembed.problem import ClassProblem, prepare
from liteembed.requests import (
    ClassRequest,
    ImageData,
    LearnedClass,
    ProgressCallback,
    ProgressEvent,
    ProtectedClass,
)
from liteembed.scale import word_scale
from liteembed.threshold import acceptance_threshold, noise_ceiling, noise_features
from liteembed.vocab import Vocabulary

log = logging.getLogger(__name__)

_ADAM_EPS = 1e-8
_WARNED_MODELS: set[str] = set()


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
    # Per class and step of a hold-out run: the held-out images' mean cosine to the word, and
    # the share of evidence images the word leaves to something else.
    holdout_similarity: list[list[float]]
    evidence_kept: list[list[float]]
    # With `_Batch.final_from`: the final rows' parameters after each step (index t - 1 after t).
    snapshots: list[torch.Tensor] = field(default_factory=list)


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
    # The step search's batch may carry the final run along: rows from this index on are the
    # classes themselves, trained on all their images and never scored (None: no such rows).
    final_from: int | None = None

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
            evidence=problem.evidence.features,
            evidence_own=problem.evidence.own,
            evidence_has_own=problem.evidence.has_own,
        )


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
    param = _parameterisation(vocabulary, config, backend.device, scale.norm_cap(config))
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
    batch = _Batch(
        backend=backend,
        vocabulary=vocabulary,
        problems=problems,
        param=param,
        config=config,
        init=param.clamp(torch.stack([param.from_token(p.init_vector) for p in problems])),
        progress=progress,
        total_steps=search_steps * (1 if carried else 2) if use_holdout else config.steps,
        lr=scale.lr(config),
        peers=_peers(names) if config.batch_negatives else [[] for _ in names],
    )
    budgets = [config.steps] * len(problems)
    holdout_info: list[dict[str, Any]] = [{} for _ in problems]
    # Each class's unseen-image similarities (from the step search), for its threshold.
    positives: list[torch.Tensor | None] = [None] * len(problems)
    offset = 0
    carried_result: _RunResult | None = None
    if use_holdout:
        # Phase 1: exemplars left out of training pick the step count; no test data involved.
        if config.step_rule == "holdout":
            search, owners = _folds(batch)
            # The final run rides along: its trajectory does not depend on the budget, so its
            # state after the chosen step is what a second run of that many steps would return.
            search = _carry_final(search, batch) if carried else search
            phase1 = _run(search, [search_steps] * len(search.problems), offset=0, holdout=True)
            pooled, pooled_margin, pooled_kept = _search_curves(
                search, phase1.holdout_accuracy, phase1.holdout_margins, phase1.evidence_kept
            )
            rank = _holdout_rank(pooled, pooled_margin, config)
            best = max(range(len(pooled)), key=rank) if pooled else 0
            budgets = [max(best, 1)] * len(problems)
            positives = _held_out_similarities(search, owners, phase1, best)
            if search.final_from is not None:
                carried_result = _carried_result(search, phase1, budgets)
            for i, problem in enumerate(problems):
                holdout_info[i] = {
                    "rule": "pooled held-out accuracy",
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
    return _finish(batch, result, holdout_info, positives, time.perf_counter() - started)


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


def _carry_final(search: _Batch, batch: _Batch) -> _Batch:
    """The search batch with one more row per class: the class itself on all its images, its
    peers the other classes' such rows, exactly as the final run would train it."""
    start = len(search.problems)
    return replace(
        search,
        problems=[*search.problems, *(replace(p, holdout=None) for p in batch.problems)],
        init=torch.cat([search.init, batch.init]),
        peers=[*search.peers, *([start + j for j in peers] for peers in batch.peers)],
        final_from=start,
    )


def _carried_result(search: _Batch, run: _RunResult, budgets: list[int]) -> _RunResult:
    """The final run read off the search's carried rows: each class's state after its budget
    (every budget is one the search ran past: the chosen step is at most its last)."""
    assert search.final_from is not None
    start = search.final_from
    count = len(search.problems) - start
    steps = [min(b, len(run.snapshots)) for b in budgets]
    params = torch.stack([run.snapshots[t - 1][i] for i, t in enumerate(steps)])
    return _RunResult(
        params,
        [run.curves[start + i][: steps[i]] for i in range(count)],
        steps,
        ["max_steps"] * count,
        *([[] for _ in range(count)] for _ in range(4)),
    )


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


def _search_curves(
    batch: _Batch,
    accuracy: list[list[float]],
    margins: list[list[float]],
    kept: list[list[float]],
) -> tuple[list[float], list[float], list[float]]:
    """Per step of the search: the objective the pooled rule maximises, the pooled held-out
    margin (its tie-break) and the pooled share of evidence kept. The objective is the pooled
    held-out accuracy, or with `holdout_evidence` and evidence present, its mean with the share
    of evidence images the words leave alone (a step that wins its own images by taking other
    classes' is not the best step)."""
    include = [p.holdout is not None for p in batch.problems]
    pooled = _pooled(accuracy, include)
    pooled_margin = _pooled(margins, include)
    pooled_kept = _pooled(kept, [bool(k) for k in kept])
    if batch.config.holdout_evidence and pooled_kept and pooled:
        length = min(len(pooled), len(pooled_kept))
        pooled = [(pooled[s] + pooled_kept[s]) / 2 for s in range(length)]
        pooled_margin = pooled_margin[:length]
    return pooled, pooled_margin, pooled_kept


def _held_out_similarities(
    search: _Batch, owners: list[int], run: _RunResult, step: int
) -> list[torch.Tensor | None]:
    """Per class of the batch, its held-out images' similarities to the words learned without
    them, at the chosen step (None for a class that held nothing out)."""
    found: dict[int, list[float]] = {}
    for row, owner in enumerate(owners):
        curve = run.holdout_similarity[row]
        if curve:
            found.setdefault(owner, []).append(curve[min(step, len(curve) - 1)])
    count = max(owners) + 1 if owners else 0
    return [torch.tensor(found[i]) if i in found else None for i in range(count)]


def _evidence_kept(inputs: LossInputs) -> float | None:
    """The share of evidence images whose best match is not the new word."""
    logits = evidence_logits(inputs)
    if logits is None:
        return None
    word, others = logits
    return float((word.detach() < others.detach().max(dim=1).values).float().mean().item())


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
            templates, param.to_token(leaf), short_context=config.short_context
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
            if holdout and not _carried(batch, i):
                kept = _evidence_kept(inputs)
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
            _stop_holdout_search(
                batch, rows, active, reasons, holdout_margins, holdout_accuracy, evidence_kept
            )
    return _RunResult(
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


def _carried(batch: _Batch, row: int) -> bool:
    return batch.final_from is not None and row >= batch.final_from


def _stop_holdout_search(
    batch: _Batch,
    rows: list[int],
    active: list[bool],
    reasons: list[str],
    margins: list[list[float]],
    accuracy: list[list[float]],
    kept: list[list[float]],
) -> None:
    """Held-out quality has not improved for 2 * patience steps: more steps only overfit."""
    config = batch.config

    def stale(curve: list[float], rank: Callable[[int], Any] | None = None) -> bool:
        best = max(range(len(curve)), key=rank or (lambda s: (curve[s], -s)))
        return len(curve) - 1 - best >= 2 * config.patience and len(curve) > config.min_steps

    if config.step_rule == "holdout":
        pooled, pooled_margin, _ = _search_curves(batch, accuracy, margins, kept)
        if pooled and stale(pooled, _holdout_rank(pooled, pooled_margin, config)):
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
    batch: _Batch,
    result: _RunResult,
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
        threshold, diagnostics["threshold"] = _threshold(
            problem, final[i], positives[i], noise, config
        )
        if problem.evidence.groups:
            inputs = batch.loss_inputs(
                i, final[i], torch.ones_like(problem.groups, dtype=torch.bool), final
            )
            diagnostics["evidence"] = {
                "groups": problem.evidence.groups,
                "kept": _evidence_kept(inputs),
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


def _threshold(
    problem: ClassProblem,
    text: torch.Tensor,
    held_out: torch.Tensor | None,
    noise: torch.Tensor,
    config: OptimizationConfig,
) -> tuple[float, dict[str, Any]]:
    """The class's acceptance threshold (liteembed.threshold) and what it rests on: its held-out
    similarities (its own images' in-sample ones when it held nothing out, which run higher),
    against its evidence images and the noise images."""
    with torch.no_grad():
        source = "held-out"
        positives = held_out
        if positives is None or not positives.numel():
            positives = (problem.originals @ text).cpu()
            source = "in-sample"
        negatives = torch.cat([problem.evidence.features @ text, noise @ text]).cpu()
    beta = config.threshold_beta
    noise_floor = noise_ceiling(noise @ text)
    rule = acceptance_threshold(positives, negatives, beta) - config.threshold_offset
    threshold = max(rule, noise_floor)
    return threshold, {
        "noise_floor": round(noise_floor, 6),
        "value": round(threshold, 6),
        "positives": source,
        "positive_mean": round(float(positives.mean()), 6),
        "negatives": int(negatives.numel()),
        "beta": beta,
        "offset": config.threshold_offset,
    }
