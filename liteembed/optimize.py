"""The LiteEmbed optimisation (method.md, "Our reconstruction (v1)").

A new word v is optimised in the token-embedding space of the frozen text encoder so that the
prompt(s) holding it classify the exemplar images as the new class against mined hard negatives,
with optional coarse alignment to an anchor and fine separation from the negatives in the
word-feature PCA subspaces. Several classes are optimised in one batch: every class has its own
parameter row, its own Adam state and its own stopping decision, and the total loss is a sum of
per-class losses, so a class's result does not depend on which other classes share the batch.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from liteembed.backend import ClipBackend
from liteembed.config import OptimizationConfig
from liteembed.errors import InvalidNameError, NoImagesError, OptimizationCancelled
from liteembed.images import decode_image, to_rgb
from liteembed.vocab import WORD_TEMPLATE, Vocabulary, words_in

MAX_NAME_LENGTH = 100
_ADAM_EPS = 1e-8

ImageInput = Image.Image | bytes


@dataclass(frozen=True)
class ClassRequest:
    name: str
    images: Sequence[ImageInput]
    hints: Sequence[str] = ()
    confusers: Sequence[str] = ()


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
class _Problem:
    """Everything fixed about one class before the loop starts."""

    name: str
    exemplars: torch.Tensor  # (V, E) image features incl. augmented views
    groups: torch.Tensor  # (V,) index of the original image each view comes from
    prototype: torch.Tensor  # (E,)
    negatives: torch.Tensor  # (N, E)
    negative_names: list[str]
    negative_sources: list[str]
    anchor: torch.Tensor | None  # (E,)
    anchor_words: list[str]
    init_vector: torch.Tensor  # (d_tok,)
    init_from: str
    holdout: int | None = None  # image index left out of the alignment loss in phase 1


@dataclass
class _Parameterisation:
    """v = mean + basis @ a with |a| <= box, or v = a when `basis` is None."""

    mean: torch.Tensor | None
    basis: torch.Tensor | None
    box: torch.Tensor | None

    def to_token(self, params: torch.Tensor) -> torch.Tensor:
        if self.basis is None or self.mean is None:
            return params
        return self.mean + params @ self.basis.T

    def from_token(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.basis is None or self.mean is None:
            return vectors.clone()
        return self.clamp((vectors - self.mean) @ self.basis)

    def clamp(self, params: torch.Tensor) -> torch.Tensor:
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


def validate_name(name: str) -> str:
    cleaned = " ".join(str(name).split())
    if not cleaned or not re.search(r"[^\W_]", cleaned):
        raise InvalidNameError(f"class name {name!r} is empty or has no letters or digits")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"class name is {len(cleaned)} characters; at most {MAX_NAME_LENGTH}"
        )
    return cleaned


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
    """Learn one new word per request, all in one batch; see the module docstring."""
    config = config or OptimizationConfig()
    if vocabulary.model_id != backend.model_id:
        raise ValueError(f"vocabulary of {vocabulary.model_id} used with {backend.model_id}")
    if not requests:
        return []
    started = time.perf_counter()
    problems = _prepare(backend, vocabulary, requests, registered or {}, config, seed)
    param = _parameterisation(vocabulary, config, backend.device)
    init = torch.stack([param.from_token(p.init_vector) for p in problems])
    use_holdout = config.holdout_stopping and all(p.holdout is not None for p in problems)
    total = config.steps * (2 if use_holdout else 1)
    budgets = [config.steps] * len(problems)
    holdout_info: list[dict[str, Any]] = [{} for _ in problems]
    offset = 0
    if use_holdout:
        # Phase 1: one exemplar left out picks the step count; no test data involved.
        phase1 = _run(
            backend,
            vocabulary,
            problems,
            init,
            param,
            config,
            budgets,
            progress,
            total,
            0,
            holdout=True,
        )
        for i, margins in enumerate(phase1.holdout_margins):
            best = max(range(len(margins)), key=lambda s: (margins[s], -s)) if margins else 0
            budgets[i] = max(best, 1)
            holdout_info[i] = {
                "held_out_image": problems[i].holdout,
                "best_step": best,
                "held_out_margins": _subsample(margins, config.loss_curve_points),
            }
        offset = config.steps
    result = _run(
        backend,
        vocabulary,
        problems,
        init,
        param,
        config,
        budgets,
        progress,
        total,
        offset,
        holdout=False,
    )
    seconds = time.perf_counter() - started
    return _finish(
        backend,
        vocabulary,
        problems,
        result,
        param,
        init,
        config,
        holdout_info,
        seconds,
        len(requests),
    )


def _prepare(
    backend: ClipBackend,
    vocabulary: Vocabulary,
    requests: Sequence[ClassRequest],
    registered: Mapping[str, torch.Tensor],
    config: OptimizationConfig,
    seed: int,
) -> list[_Problem]:
    device = backend.device
    names = [validate_name(r.name) for r in requests]
    hint_lists = [[" ".join(h.lower().split()) for h in r.hints if h.strip()] for r in requests]
    for hints in hint_lists:
        _validate_hints(vocabulary, hints)
    all_views: list[Image.Image] = []
    view_groups: list[list[int]] = []
    holdouts: list[int | None] = []
    for name, request in zip(names, requests, strict=True):
        if not request.images:
            raise NoImagesError(f"class {name!r} has no images")
        originals = [_as_rgb(image) for image in request.images]
        # One generator per class, seeded alike: a class draws the same views and held-out
        # image whether it is learned alone or in a batch.
        generator = torch.Generator().manual_seed(seed)
        views, groups = _augment(originals, config, generator)
        all_views.extend(views)
        view_groups.append(groups)
        holdout = int(torch.randint(len(originals), (1,), generator=generator).item())
        holdouts.append(holdout if len(originals) >= 2 else None)
    features = backend.encode_images(all_views).to(device)
    word_features = vocabulary.word_features.to(device)
    registered_names = list(registered)
    registered_features = (
        F.normalize(
            torch.stack([_vector(registered[n]) for n in registered_names]).to(device),
            dim=-1,
        )
        if registered_names
        else torch.empty(0, backend.embed_dim, device=device)
    )
    if registered_features.shape[1] != backend.embed_dim:
        raise ValueError(
            f"registered features have dimension {registered_features.shape[1]}, "
            f"the model's is {backend.embed_dim}"
        )
    problems: list[_Problem] = []
    start = 0
    for name, request, hints, groups, holdout in zip(
        names, requests, hint_lists, view_groups, holdouts, strict=True
    ):
        exemplars = features[start : start + len(groups)]
        start += len(groups)
        group_tensor = torch.tensor(groups, device=device)
        originals = exemplars[_first_views(groups, device)]
        prototype = F.normalize(originals.mean(dim=0), dim=-1)
        excluded = set(words_in(name)) | {w for h in hints for w in words_in(h)}
        similarity = word_features @ prototype
        allowed = torch.tensor([w not in excluded for w in vocabulary.words], device=device)
        ranked = torch.argsort(torch.where(allowed, similarity, -math.inf), descending=True)
        ranked = ranked[: int(allowed.sum().item())]
        neg_features: list[torch.Tensor] = []
        neg_names: list[str] = []
        neg_sources: list[str] = []
        if "vocabulary" in config.negative_sources and config.m > 0:
            chosen = ranked[: config.m]
            neg_features.append(word_features[chosen])
            neg_names += [vocabulary.words[i] for i in chosen.tolist()]
            neg_sources += ["vocabulary"] * len(chosen)
        confusers = [
            c.strip() for c in request.confusers if c.strip() and c.strip().lower() != name.lower()
        ]
        if "confusers" in config.negative_sources and confusers:
            neg_features.append(
                backend.encode_texts([WORD_TEMPLATE.format(c) for c in confusers]).to(device)
            )
            neg_names += confusers
            neg_sources += ["confuser"] * len(confusers)
        if "registered" in config.negative_sources and registered_names and config.m_registered > 0:
            keep = [i for i, n in enumerate(registered_names) if n.strip().lower() != name.lower()]
            if keep:
                candidates = registered_features[keep]
                order = torch.argsort(candidates @ prototype, descending=True)[
                    : config.m_registered
                ]
                neg_features.append(candidates[order])
                neg_names += [registered_names[keep[i]] for i in order.tolist()]
                neg_sources += ["registered"] * len(order)
        negatives = (
            torch.cat(neg_features)
            if neg_features
            else torch.empty(0, backend.embed_dim, device=device)
        )
        anchor: torch.Tensor | None = None
        if hints:
            anchor_words = hints
            # Same prompt as the word features, so a one-word hint's anchor is its Z_W row.
            hint_features = backend.encode_texts([WORD_TEMPLATE.format(h) for h in hints])
            anchor = F.normalize(hint_features.to(device).mean(dim=0), dim=-1)
        else:
            anchor_rows = ranked[: config.anchor_words]
            anchor_words = [vocabulary.words[i] for i in anchor_rows.tolist()]
            if len(anchor_rows):
                anchor = F.normalize(word_features[anchor_rows].mean(dim=0), dim=-1)
        init_vector, init_from = _initial_vector(backend, vocabulary, name, ranked)
        problems.append(
            _Problem(
                name=name,
                exemplars=exemplars,
                groups=group_tensor,
                prototype=prototype,
                negatives=negatives,
                negative_names=neg_names,
                negative_sources=neg_sources,
                anchor=anchor,
                anchor_words=list(anchor_words),
                init_vector=init_vector,
                init_from=init_from,
                holdout=holdout,
            )
        )
    return problems


def _vector(value: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """A registered class's feature as a flat float32 CPU tensor (tensors or plain lists)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().reshape(-1)
    return torch.as_tensor(value, dtype=torch.float32).reshape(-1)


def _validate_hints(vocabulary: Vocabulary, hints: list[str]) -> None:
    """Each hint must be a vocabulary word, or a phrase made only of vocabulary words
    ("curved shape"): the anchor is only meaningful where the model has seen the words."""
    for hint in hints:
        if vocabulary.index(hint) is not None:
            continue
        parts = hint.split()
        if len(parts) < 2 or any(vocabulary.index(part) is None for part in parts):
            vocabulary.require_words([hint])  # raises UnknownHintError with the usual message


def _first_views(groups: list[int], device: torch.device) -> torch.Tensor:
    """Positions of the un-augmented view of every image (the first view of each group)."""
    seen: set[int] = set()
    positions = []
    for position, group in enumerate(groups):
        if group not in seen:
            seen.add(group)
            positions.append(position)
    return torch.tensor(positions, device=device)


def _as_rgb(image: ImageInput) -> Image.Image:
    if isinstance(image, bytes | bytearray):
        return decode_image(bytes(image))
    return to_rgb(image)


def _augment(
    images: list[Image.Image], config: OptimizationConfig, generator: torch.Generator
) -> tuple[list[Image.Image], list[int]]:
    """Each image, then `augment_views` extra views of it: a mirror image, then random crops."""
    views: list[Image.Image] = []
    groups: list[int] = []
    for index, image in enumerate(images):
        views.append(image)
        groups.append(index)
        for view in range(config.augment_views):
            if view == 0:
                views.append(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
            else:
                views.append(_random_crop(image, config.augment_min_scale, generator))
            groups.append(index)
    return views, groups


def _random_crop(image: Image.Image, min_scale: float, generator: torch.Generator) -> Image.Image:
    width, height = image.size
    draws = torch.rand(3, generator=generator).tolist()
    side = math.sqrt(min_scale + (1 - min_scale) * draws[0])  # area fraction -> side fraction
    crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
    left = round((width - crop_w) * draws[1])
    top = round((height - crop_h) * draws[2])
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height))


def _initial_vector(
    backend: ClipBackend, vocabulary: Vocabulary, name: str, ranked: torch.Tensor
) -> tuple[torch.Tensor, str]:
    """The name's mean token embedding when all its tokens are trained, else the nearest word's."""
    table = backend.token_table
    tokens = backend.encode_word_tokens(name)
    if tokens and all(vocabulary.is_trained_token(t) for t in tokens):
        return table[torch.tensor(tokens, device=table.device)].mean(dim=0), f"name:{name}"
    word_index = int(ranked[0].item()) if len(ranked) else 0
    word_tokens = torch.tensor(vocabulary.word_token_ids[word_index], device=table.device)
    return table[word_tokens].mean(dim=0), f"nearest word:{vocabulary.words[word_index]}"


def _parameterisation(
    vocabulary: Vocabulary, config: OptimizationConfig, device: torch.device
) -> _Parameterisation:
    if config.parameterization == "token":
        return _Parameterisation(mean=None, basis=None, box=None)
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
        mean=vocabulary.token_mean.to(device), basis=basis, box=config.kappa * std
    )


def _class_loss(
    text_feature: torch.Tensor,
    problem: _Problem,
    vocabulary: Vocabulary,
    config: OptimizationConfig,
    scale: float,
    include: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one class and the per-view margins cos(f, t) - max_j cos(f, z_j) (no grad)."""
    exemplars = problem.exemplars[include]
    positive = exemplars @ text_feature  # (V,)
    if problem.negatives.shape[0]:
        negative = exemplars @ problem.negatives.T  # (V, N)
        logits = scale * torch.cat([positive[:, None], negative], dim=1)
        target = torch.zeros(exemplars.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, target)
        margins = (positive - negative.max(dim=1).values).detach()
    else:
        # No negatives: cross-entropy over one class is constant, so pull the cosine up instead.
        loss = (1 - positive).mean()
        margins = positive.detach()
    mean = vocabulary.feature_mean.to(text_feature.device)
    basis = vocabulary.feature_basis.to(text_feature.device)
    k = min(config.k, basis.shape[1])
    centered = text_feature - mean
    if config.lambda_c > 0 and problem.anchor is not None and k > 0:
        coarse_t = centered @ basis[:, :k]
        coarse_g = (problem.anchor - mean) @ basis[:, :k]
        loss = loss + config.lambda_c * (1 - F.cosine_similarity(coarse_t, coarse_g, dim=0))
    if config.lambda_f > 0 and problem.negatives.shape[0] and basis.shape[1] > k:
        fine_t = centered @ basis[:, k:]
        fine_z = (problem.negatives - mean) @ basis[:, k:]
        cosines = F.cosine_similarity(fine_t[None, :], fine_z, dim=1)
        if config.fine_loss == "hinge":
            fine = F.relu(cosines - config.fine_margin)
        else:
            tau = config.fine_temperature
            fine = tau * F.softplus((cosines - config.fine_margin) / tau)
        loss = loss + config.lambda_f * fine.mean()
    return loss, margins


def _run(
    backend: ClipBackend,
    vocabulary: Vocabulary,
    problems: list[_Problem],
    init: torch.Tensor,
    param: _Parameterisation,
    config: OptimizationConfig,
    budgets: list[int],
    progress: ProgressCallback | None,
    total: int,
    offset: int,
    *,
    holdout: bool,
) -> _RunResult:
    count = len(problems)
    params = init.detach().clone()
    first_moment = torch.zeros_like(params)
    second_moment = torch.zeros_like(params)
    beta1, beta2 = config.betas
    curves: list[list[float]] = [[] for _ in problems]
    holdout_margins: list[list[float]] = [[] for _ in problems]
    steps_run = [0] * count
    reasons = ["max_steps"] * count
    active = [budgets[i] > 0 for i in range(count)]
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
        losses = []
        accuracies = []
        stop_now: list[int] = []
        for j, i in enumerate(rows):
            loss, margins = _class_loss(
                text[j], problems[i], vocabulary, config, backend.logit_scale, includes[i]
            )
            losses.append(loss)
            curves[i].append(float(loss.item()))
            accuracies.append(float((margins > 0).float().mean().item()))
            if holdout:
                held = problems[i].groups == problems[i].holdout
                with torch.no_grad():
                    margin = _margins(
                        problems[i].exemplars[held], text[j].detach(), problems[i].negatives
                    )
                holdout_margins[i].append(float(margin.mean().item()))
            elif config.early_stopping and _converged(curves[i], margins, config):
                stop_now.append(j)
        # Sum, not mean: each class gets exactly the gradient it would get alone.
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
                params[i] = param.clamp(params[i] - config.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS))
        if progress is not None:
            event = ProgressEvent(
                step=offset + step + 1,
                total=total,
                loss=float(sum(curves[i][-1] for i in rows) / len(rows)),
                exemplar_accuracy=float(sum(accuracies) / len(accuracies)),
            )
            if progress(event):
                raise OptimizationCancelled(f"cancelled at step {event.step} of {total}")
        if holdout:
            for i in rows:
                margins_i = holdout_margins[i]
                best = max(range(len(margins_i)), key=lambda s, m=margins_i: (m[s], -s))
                # Held-out margin has not improved for a while: more steps only overfit.
                if (
                    len(margins_i) - 1 - best >= 2 * config.patience
                    and len(margins_i) > config.min_steps
                ):
                    active[i] = False
                    reasons[i] = "holdout"
    return _RunResult(params, curves, steps_run, reasons, holdout_margins)


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
    backend: ClipBackend,
    vocabulary: Vocabulary,
    problems: list[_Problem],
    result: _RunResult,
    param: _Parameterisation,
    init: torch.Tensor,
    config: OptimizationConfig,
    holdout_info: list[dict[str, Any]],
    seconds: float,
    batch_size: int,
) -> list[LearnedClass]:
    templates = list(config.templates)
    with torch.no_grad():
        tokens = param.to_token(result.params)
        features = backend.encode_with_token(templates, tokens, short_context=config.short_context)
        final = F.normalize(features.mean(dim=1), dim=-1)
        start_features = backend.encode_with_token(
            templates, param.to_token(init), short_context=config.short_context
        )
        initial = F.normalize(start_features.mean(dim=1), dim=-1)
    learned = []
    for i, problem in enumerate(problems):
        margins = _margins(problem.exemplars, final[i], problem.negatives)
        diagnostics: dict[str, Any] = {
            "loss_curve": _subsample(result.curves[i], config.loss_curve_points),
            "exemplar_accuracy": float((margins > 0).float().mean().item()),
            "final_margins": [round(float(m), 6) for m in margins.tolist()],
            "negatives": [
                {"name": n, "source": s}
                for n, s in zip(problem.negative_names, problem.negative_sources, strict=True)
            ],
            "anchor_words": problem.anchor_words,
            "init_from": problem.init_from,
            "steps_run": result.steps_run[i],
            "stop_reason": result.stop_reasons[i],
            "prototype_similarity_initial": float(initial[i] @ problem.prototype),
            "prototype_similarity_final": float(final[i] @ problem.prototype),
            "views": int(problem.exemplars.shape[0]),
            "parameterization": config.parameterization,
            "seconds": round(seconds, 4),
            "batch_size": batch_size,
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
