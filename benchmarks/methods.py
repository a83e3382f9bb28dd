"""The compared methods, all scored in the joint setting (base + held-out classes, one classifier).

Every method comes from the one registry (`liteembed.registry`); a benchmark row (`MethodSpec`)
names a registered method and its options. Two shapes of method are scored:

- per-class methods (the engine's: zero-shot by name, image prototype, textual inversion,
  LiteEmbed): `fit_classes` turns each held-out class's shots into one feature that joins the base
  classes' zero-shot text features; text features (plug-and-play) also take part in text-to-image
  retrieval;
- joint methods, registered here because they need shots of every class and score the joint task
  themselves (`evaluate(ctx, draws, k)`), so they are not plug-and-play:
  - Tip-Adapter (Zhang et al., ECCV'22), training-free: logits = s f.W^T +
    alpha exp(-beta (1 - f.F^T)) L with the model's own logit scale s (the original code fixes
    100, OpenAI CLIP's), where W are the text features of every class name and the cache (F, L)
    holds K shots of every class, base and held-out, as in the original (it needs shots of the
    base classes too, which the text-side methods never see); alpha and beta are tuned on the
    validation classes (benchmarks/tune.py), the published 1 and 5.5 otherwise. The variant
    "tip-adapter (held-out cache)" caches only the held-out shots, i.e. exactly the data LiteEmbed
    gets;
  - linear probe: multinomial logistic regression (L-BFGS, fixed C, see LINEAR_PROBE_C) on the K
    shots of every class, base and held-out (the standard protocol; adding a class refits all).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.base_as_new import without_words
from benchmarks.data import SupportDraw, Task
from benchmarks.metrics import confusion_rate, harmonic_mean, mean_average_precision, top1
from benchmarks.text_standins import text_standin_bank
from liteembed import (
    ClassRequest,
    ClipBackend,
    OptimizationConfig,
    ReferenceBank,
    Vocabulary,
    create_method,
    find_bank,
    method_entry,
    register_method,
)
from liteembed.vocab import WORD_TEMPLATE

TIP_ALPHA = 1.0  # Tip-Adapter's published defaults (Zhang et al., ECCV 2022)
TIP_BETA = 5.5
TIP_CLIP_SCALE = 100.0  # the fixed zero-shot logit scale of Tip-Adapter's code (OpenAI CLIP's)
# Inverse L2 strength of the linear probe: fixed for all K and seeds; set once on the
# validation classes at 4 shots (benchmarks/results/validation_search.json, "linear_probe_c").
LINEAR_PROBE_C = 10.0


@dataclass(frozen=True)
class MethodSpec:
    """One benchmark row: the registered method `method` built with these options."""

    name: str  # the row's label
    method: str  # a name from liteembed.registry.list_methods()
    config: OptimizationConfig | None = None  # passed as `config` to methods that optimise
    use_hints: bool = False  # pass the task's coarse hints (category words) to the method
    options: tuple[tuple[str, Any], ...] = ()  # further factory options, as (name, value) pairs
    note: str = ""
    # Images of each of the task's look-alikes of a held-out class (from the support draw, never
    # the test gallery) given as that class's negative images ("not this"), this many each.
    lookalike_images: int = 0

    @property
    def plug_and_play(self) -> bool:
        return method_entry(self.method).plug_and_play

    def build(self) -> Any:
        options = dict(self.options)
        if self.config is not None:
            options["config"] = self.config
        return create_method(self.method, **options)


@dataclass
class Context:
    """What every method shares on one task: the base classes' zero-shot text features etc."""

    task: Task
    base_text: torch.Tensor  # (B, E)
    name_text: torch.Tensor  # (H, E) zero-shot features of the held-out names
    base_before: float  # base top-1 among base classes only, before anything is added
    logit_scale: float = TIP_CLIP_SCALE  # the model's own
    # Keep every held-out name of the task out of the vocabulary words mined for a held-out
    # class (they are the test classes: no method may learn against them from their names).
    hide_heldout_names: bool = True

    @classmethod
    def build(
        cls,
        backend: ClipBackend,
        task: Task,
        template: str = WORD_TEMPLATE,
        *,
        hide_heldout_names: bool = True,
    ) -> Context:
        base_text = _texts(backend, task.base, template)
        name_text = _texts(backend, task.heldout, template)
        mask = task.base_mask
        before = top1(task.test_features[mask] @ base_text.T, task.test_labels[mask])
        return cls(
            task, base_text, name_text, before, float(backend.logit_scale), hide_heldout_names
        )


def _texts(backend: ClipBackend, names: Sequence[str], template: str) -> torch.Tensor:
    return F.normalize(
        backend.encode_texts([template.format(n) for n in names]).float().cpu(), dim=-1
    )


@dataclass
class Outcome:
    """One (method, K, draw) result."""

    heldout: float
    base_after: float
    base_before: float
    hm: float
    map: float | None
    seconds_per_class: float
    per_class: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Per held-out class with look-alikes: the share of its test images predicted as one of them.
    lookalike: dict[str, float] = field(default_factory=dict)
    # Per base class that lost any: the share of its test images predicted as a held-out class.
    base_taken: dict[str, float] = field(default_factory=dict)
    # Per held-out class that took any: per base class, the share of its test images it took.
    taken_by: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "heldout": self.heldout,
            "base_after": self.base_after,
            "base_before": self.base_before,
            "hm": self.hm,
            "map": self.map,
            "seconds_per_class": self.seconds_per_class,
            "per_class": self.per_class,
            **({"extra": self.extra} if self.extra else {}),
            **({"lookalike": self.lookalike} if self.lookalike else {}),
            **({"base_taken": self.base_taken} if self.base_taken else {}),
            **({"taken_by": self.taken_by} if self.taken_by else {}),
        }


def score_logits(
    ctx: Context,
    logits: torch.Tensor,
    heldout_text: torch.Tensor | None,
    seconds_per_class: float,
    extra: dict[str, Any] | None = None,
) -> Outcome:
    task = ctx.task
    labels = task.test_labels
    base_mask = task.base_mask
    held = top1(logits[~base_mask], labels[~base_mask])
    base_after = top1(logits[base_mask], labels[base_mask])
    predictions = logits.argmax(dim=1)
    per_class = {}
    for j, name in enumerate(task.heldout):
        rows = labels == len(task.base) + j
        per_class[name] = float((predictions[rows] == labels[rows]).float().mean().item())
    index = {name: i for i, name in enumerate(task.classes)}
    lookalike = {
        name: confusion_rate(
            predictions, labels, index[name], [index[b] for b in bases if b in index]
        )
        for name, bases in task.lookalikes.items()
        if name in index
    }
    taken = predictions >= len(task.base)
    base_taken = {
        name: share
        for i, name in enumerate(task.base)
        if (share := float(taken[labels == i].float().mean().item())) > 0
    }
    taken_by: dict[str, dict[str, float]] = {}
    for j, new in enumerate(task.heldout):
        shares = {
            name: share
            for i, name in enumerate(task.base)
            if (share := float((predictions[labels == i] == len(task.base) + j).float().mean()))
        }
        if shares:
            taken_by[new] = shares
    retrieval = None
    if heldout_text is not None:
        retrieval = mean_average_precision(
            heldout_text,
            task.test_features,
            labels,
            [len(task.base) + j for j in range(len(task.heldout))],
        )
    return Outcome(
        held,
        base_after,
        ctx.base_before,
        harmonic_mean(held, base_after),
        retrieval,
        seconds_per_class,
        per_class,
        extra or {},
        lookalike,
        base_taken,
        taken_by,
    )


def score_text(
    ctx: Context,
    heldout_features: torch.Tensor,
    seconds_per_class: float,
    *,
    text: bool,
    extra: dict[str, Any] | None = None,
) -> Outcome:
    """Joint classifier = base zero-shot text features + one feature per held-out class."""
    weights = torch.cat([ctx.base_text, F.normalize(heldout_features.float(), dim=-1)])
    logits = ctx.task.test_features @ weights.T
    return score_logits(ctx, logits, heldout_features if text else None, seconds_per_class, extra)


# ------------------------------------------------------------------ training-free / classic


def tip_adapter_logits(
    features: torch.Tensor,
    text_weights: torch.Tensor,
    cache_keys: torch.Tensor,
    cache_labels: torch.Tensor,
    num_classes: int,
    *,
    alpha: float = TIP_ALPHA,
    beta: float = TIP_BETA,
    scale: float = TIP_CLIP_SCALE,
) -> torch.Tensor:
    """Tip-Adapter (training-free): zero-shot logits plus the affinity-weighted one-hot cache."""
    values = F.one_hot(cache_labels, num_classes).float()
    affinity = features @ cache_keys.T
    cache_logits = torch.exp(-beta * (1 - affinity)) @ values
    return scale * features @ text_weights.T + alpha * cache_logits


def linear_probe_logits(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    *,
    c: float = LINEAR_PROBE_C,
) -> torch.Tensor:
    """Multinomial logistic regression on L2-normalised image features; classes without any
    training example (never the case in the benchmark) get -inf logits."""
    from sklearn.linear_model import LogisticRegression

    x = F.normalize(train_features.float(), dim=-1).numpy()
    y = train_labels.numpy()
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit(x, y)
    probs = model.decision_function(F.normalize(test_features.float(), dim=-1).numpy())
    if probs.ndim == 1:  # two classes: sklearn returns one column
        probs = np.stack([-probs, probs], axis=1)
    logits = torch.full((len(test_features), num_classes), -torch.inf)
    logits[:, torch.as_tensor(model.classes_)] = torch.as_tensor(probs, dtype=torch.float32)
    return logits


def _all_shots(
    ctx: Context, draw: SupportDraw, k: int, names: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    classes = ctx.task.classes
    keep = set(names) if names is not None else set(classes)
    feats, labels = [], []
    for index, name in enumerate(classes):
        if name in keep:
            f = draw.shot_features(name, k)
            feats.append(f)
            labels.append(torch.full((len(f),), index, dtype=torch.long))
    return torch.cat(feats), torch.cat(labels)


@runtime_checkable
class JointMethod(Protocol):
    """A method that needs shots of every class and scores the joint task itself."""

    def evaluate(
        self, ctx: Context, draws: Sequence[tuple[int, SupportDraw]], k: int
    ) -> list[Outcome]: ...


@register_method("tip-adapter", plug_and_play=False, description="cache: K shots of every class")
@dataclass
class TipAdapter:
    """alpha and beta: the published defaults unless tuned (benchmarks/tune.py sets them on the
    validation classes); the zero-shot logits use the model's own logit scale unless `scale`."""

    alpha: float = TIP_ALPHA
    beta: float = TIP_BETA
    scale: float | None = None
    heldout_cache_only: bool = False  # cache only the held-out classes' shots

    def evaluate(
        self, ctx: Context, draws: Sequence[tuple[int, SupportDraw]], k: int
    ) -> list[Outcome]:
        task = ctx.task
        outcomes = []
        for _, draw in draws:
            started = time.perf_counter()
            names = task.heldout if self.heldout_cache_only else None
            keys, labels = _all_shots(ctx, draw, k, names)
            text = torch.cat([ctx.base_text, ctx.name_text])
            logits = tip_adapter_logits(
                task.test_features,
                text,
                keys,
                labels,
                len(task.classes),
                alpha=self.alpha,
                beta=self.beta,
                scale=ctx.logit_scale if self.scale is None else self.scale,
            )
            seconds = (time.perf_counter() - started) / len(task.heldout)
            outcomes.append(score_logits(ctx, logits, None, seconds))
        return outcomes


@register_method(
    "tip-adapter (held-out cache)", plug_and_play=False, description="cache: held-out shots"
)
def tip_adapter_heldout_cache(**options: Any) -> TipAdapter:
    return TipAdapter(heldout_cache_only=True, **options)


@register_method(
    "linear-probe", plug_and_play=False, description="logistic regression, all classes"
)
@dataclass
class LinearProbe:
    c: float = LINEAR_PROBE_C

    def evaluate(
        self, ctx: Context, draws: Sequence[tuple[int, SupportDraw]], k: int
    ) -> list[Outcome]:
        task = ctx.task
        outcomes = []
        for _, draw in draws:
            started = time.perf_counter()
            x, y = _all_shots(ctx, draw, k)
            logits = linear_probe_logits(x, y, task.test_features, len(task.classes), c=self.c)
            # The probe refits every class; the cost is charged to the held-out classes it adds.
            seconds = (time.perf_counter() - started) / len(task.heldout)
            outcomes.append(score_logits(ctx, logits, None, seconds))
        return outcomes


def evaluate(
    spec: MethodSpec,
    ctx: Context,
    backend: ClipBackend,
    vocabulary: Vocabulary,
    draws: Sequence[tuple[int, SupportDraw]],
    k: int,
) -> list[Outcome]:
    """One outcome per draw for the row `spec` at K shots."""
    method = spec.build()
    if getattr(method, "bank", None) == "shipped":
        method.bank = find_bank(backend)
    if isinstance(getattr(method, "bank", None), ReferenceBank):
        # A bank never holds images of the classes being learned (base-as-new learns base ones).
        method.bank = without_words(method.bank, list(ctx.task.heldout))
    if isinstance(method, JointMethod):
        return method.evaluate(ctx, draws, k)
    return _evaluate_per_class(method, spec, ctx, backend, vocabulary, draws, k)


def _evaluate_per_class(
    method: Any,
    spec: MethodSpec,
    ctx: Context,
    backend: ClipBackend,
    vocabulary: Vocabulary,
    draws: Sequence[tuple[int, SupportDraw]],
    k: int,
) -> list[Outcome]:
    """The held-out classes of each draw in one `fit_classes` call, as a user registers them
    together (LiteEmbed makes the classes of one batch each other's negatives).

    The engine's seed is fixed (the method's default, 0) across draws: it only picks
    augmentations / the held-out shot, and the draws already differ in their images."""
    task = ctx.task
    hidden = tuple(task.heldout) if ctx.hide_heldout_names else ()
    # A class registered under an alias never has its own word mined.
    hidden += tuple(name for name in task.heldout if name in task.aliases)
    per_draw = []
    started = time.perf_counter()
    text_standins = getattr(method, "bank", None) == "text"
    for index, draw in draws:
        if text_standins:
            method.bank = text_standin_bank(
                vocabulary,
                [draw.shot_features(name, k) for name in task.heldout],
                model_id=backend.model_id,
                seed=index,
            )
        requests = []
        for name in task.heldout:
            hints: tuple[str, ...] = ()
            if spec.use_hints:
                # A hint only means something if the model saw the word (docs/method.md); a
                # capped or foreign vocabulary may lack the category word, and then none is given.
                hints = tuple(
                    h for h in task.hints.get(name, ()) if vocabulary.index(h) is not None
                )
            negatives = [
                image
                for other in task.lookalikes.get(name, ())
                for image in draw.shots(other, spec.lookalike_images)
            ]
            requests.append(
                ClassRequest(
                    name=task.aliases.get(name, name),
                    images=draw.shots(name, k),
                    hints=hints,
                    not_negatives=hidden,
                    negative_images=negatives,
                )
            )
        per_draw.append(method.fit_classes(backend, vocabulary, requests))
    seconds = (time.perf_counter() - started) / (len(draws) * len(task.heldout))
    outcomes = []
    for chunk in per_draw:
        feats = torch.stack([c.feature for c in chunk]).float()
        extra: dict[str, Any] = {}
        if all("steps_run" in c.diagnostics for c in chunk):
            steps = [c.diagnostics["steps_run"] for c in chunk]
            reasons = [c.diagnostics.get("stop_reason", "") for c in chunk]
            extra = {
                "steps_run_mean": sum(steps) / len(steps),
                "stop_reasons": {r: reasons.count(r) for r in set(reasons)},
            }
        # The second pass's record of each class it learned again (liteembed.reweigh).
        second = {
            c.name: record
            for c in chunk
            if (record := (c.diagnostics.get("evidence") or {}).get("reweigh"))
        }
        if second:
            extra["second_pass"] = second
        text = all(c.is_text_feature for c in chunk)
        outcomes.append(score_text(ctx, feats, seconds, text=text, extra=extra))
    return outcomes
