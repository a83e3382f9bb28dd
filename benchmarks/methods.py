"""The compared methods, all scored in the joint setting (base + held-out classes, one classifier).

Plug-and-play methods produce one text feature per held-out class that simply joins the base
classes' zero-shot text features (zero-shot by name, textual inversion, LiteEmbed variants); they
also take part in text-to-image retrieval. The others are classifiers that need image-space
weights and so are not plug-and-play:

- image prototype: the held-out class's weight is the mean of its shots' image features, beside
  the base classes' text features (the engine's `ImagePrototype`, computed from cached features);
- Tip-Adapter (Zhang et al., ECCV'22), training-free, with its published defaults alpha=1,
  beta=5.5 and its code's fixed zero-shot logit scale 100: logits = 100 f.W^T +
  alpha exp(-beta (1 - f.F^T)) L, where W are the text features of every class name and the cache
  (F, L) holds K shots of every class, base and held-out, as in the original (it needs shots of the
  base classes too, which the text-side methods never see). The variant "tip-adapter (held-out
  cache)" caches only the held-out shots, i.e. exactly the data LiteEmbed gets;
- linear probe: multinomial logistic regression (L-BFGS, fixed C, see LINEAR_PROBE_C) on the K
  shots of every class, base and held-out (the standard protocol; adding a class refits all).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.data import SupportDraw, Task
from benchmarks.metrics import harmonic_mean, mean_average_precision, top1
from liteembed import ClassRequest, ClipBackend, OptimizationConfig, Vocabulary, learn_classes
from liteembed.vocab import WORD_TEMPLATE

MethodKind = Literal[
    "zero-shot", "prototype", "tip-adapter", "tip-adapter-heldout", "linear-probe", "learned"
]

TIP_ALPHA = 1.0  # Tip-Adapter's published defaults (peer-methods.md), not tuned here
TIP_BETA = 5.5
TIP_CLIP_SCALE = 100.0  # the fixed zero-shot logit scale of Tip-Adapter's code
# Inverse L2 strength of the linear probe: fixed for all K and seeds; set once on the
# validation classes at 4 shots (benchmarks/results/validation_search.json, "linear_probe_c").
LINEAR_PROBE_C = 10.0


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: MethodKind
    config: OptimizationConfig | None = None  # for kind == "learned"
    use_hints: bool = False  # pass the task's coarse hints (category words) to the engine
    note: str = ""

    @property
    def plug_and_play(self) -> bool:
        return self.kind in ("zero-shot", "learned")

    @property
    def uses_shots(self) -> bool:
        return self.kind != "zero-shot"


@dataclass
class Context:
    """What every method shares on one task: the base classes' zero-shot text features etc."""

    task: Task
    base_text: torch.Tensor  # (B, E)
    name_text: torch.Tensor  # (H, E) zero-shot features of the held-out names
    base_before: float  # base top-1 among base classes only, before anything is added

    @classmethod
    def build(cls, backend: ClipBackend, task: Task, template: str = WORD_TEMPLATE) -> Context:
        base_text = _texts(backend, task.base, template)
        name_text = _texts(backend, task.heldout, template)
        mask = task.base_mask
        before = top1(task.test_features[mask] @ base_text.T, task.test_labels[mask])
        return cls(task, base_text, name_text, before)


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


def prototype_features(draw: SupportDraw, names: Sequence[str], k: int) -> torch.Tensor:
    return torch.stack([F.normalize(draw.shot_features(n, k).mean(dim=0), dim=-1) for n in names])


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


def evaluate_fixed(
    spec: MethodSpec,
    ctx: Context,
    draw: SupportDraw | None,
    k: int,
    *,
    linear_probe_c: float = LINEAR_PROBE_C,
) -> Outcome:
    """Every method but the learned ones (those go through `evaluate_learned`, batched)."""
    task = ctx.task
    started = time.perf_counter()
    if spec.kind == "zero-shot":
        return score_text(ctx, ctx.name_text, 0.0, text=True)
    assert draw is not None
    if spec.kind == "prototype":
        protos = prototype_features(draw, task.heldout, k)
        seconds = (time.perf_counter() - started) / len(task.heldout)
        return score_text(ctx, protos, seconds, text=False)
    num = len(task.classes)
    if spec.kind in ("tip-adapter", "tip-adapter-heldout"):
        names = task.heldout if spec.kind == "tip-adapter-heldout" else None
        keys, labels = _all_shots(ctx, draw, k, names)
        text = torch.cat([ctx.base_text, ctx.name_text])
        logits = tip_adapter_logits(task.test_features, text, keys, labels, num)
        seconds = (time.perf_counter() - started) / len(task.heldout)
        return score_logits(ctx, logits, None, seconds)
    if spec.kind == "linear-probe":
        x, y = _all_shots(ctx, draw, k)
        logits = linear_probe_logits(x, y, task.test_features, num, c=linear_probe_c)
        # The probe refits every class; the cost is charged to the held-out classes it adds.
        seconds = (time.perf_counter() - started) / len(task.heldout)
        return score_logits(ctx, logits, None, seconds)
    raise ValueError(f"evaluate_fixed cannot run {spec.kind!r}")


def evaluate_learned(
    spec: MethodSpec,
    ctx: Context,
    backend: ClipBackend,
    vocabulary: Vocabulary,
    draws: Sequence[tuple[int, SupportDraw]],
    k: int,
) -> list[Outcome]:
    """All held-out classes of all given draws in one `learn_classes` batch (each class is
    optimised independently of the others in the batch, so this only saves wall time).

    The engine's seed is fixed (0) across draws: it only picks augmentations / the held-out shot,
    and the draws already differ in their images."""
    task = ctx.task
    config = spec.config or OptimizationConfig()
    requests = []
    for _, draw in draws:
        for name in task.heldout:
            hints: tuple[str, ...] = ()
            if spec.use_hints:
                # A hint only means something if the model saw the word (method.md); a capped
                # or foreign vocabulary may lack the category word, and then none is given.
                hints = tuple(
                    h for h in task.hints.get(name, ()) if vocabulary.index(h) is not None
                )
            requests.append(ClassRequest(name=name, images=draw.shots(name, k), hints=hints))
    started = time.perf_counter()
    learned = learn_classes(backend, vocabulary, requests, config=config, seed=0)
    seconds = (time.perf_counter() - started) / len(requests)
    outcomes = []
    h = len(task.heldout)
    for d in range(len(draws)):
        chunk = learned[d * h : (d + 1) * h]
        feats = torch.stack([c.text_feature for c in chunk]).float()
        steps = [c.diagnostics.get("steps_run", 0) for c in chunk]
        reasons = [c.diagnostics.get("stop_reason", "") for c in chunk]
        outcomes.append(
            score_text(
                ctx,
                feats,
                seconds,
                text=True,
                extra={
                    "steps_run_mean": sum(steps) / len(steps),
                    "stop_reasons": {r: reasons.count(r) for r in set(reasons)},
                },
            )
        )
    return outcomes
