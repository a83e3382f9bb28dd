"""The three loss terms of one class, each a small function over the same `LossInputs`.

L = alignment + lambda_c * coarse + lambda_f * fine + lambda_img * evidence (docs/method.md):
- alignment: the exemplar images classify as the new word against the hard negatives;
- evidence: images of other things (liteembed.evidence) are not won by the new word;
- coarse: in the top-k principal subspace of the word features, the word points like its anchor;
- fine: in the remaining subspace, the word stays apart from the negatives.
A new term is a function of `LossInputs` added to `class_loss` behind a config weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from liteembed.config import OptimizationConfig


@dataclass(frozen=True)
class LossInputs:
    """What the loss terms of one class see at one step."""

    text: torch.Tensor  # (E,) the word's text feature (normalised, differentiable)
    exemplars: torch.Tensor  # (V, E) image features of the views in the loss
    negatives: torch.Tensor  # (N, E) text features of the hard negatives
    anchor: torch.Tensor | None  # (E,) coarse anchor, if any
    feature_mean: torch.Tensor  # (E,) mean of the word features
    feature_basis: torch.Tensor  # (E, r) principal directions of the word features
    k: int  # the first k directions are "coarse", the rest "fine"
    scale: float  # the model's logit scale
    # Image evidence (liteembed.evidence): features, own-word features, whether each has one.
    evidence: torch.Tensor | None = None  # (M, E)
    evidence_own: torch.Tensor | None = None  # (M, E)
    evidence_has_own: torch.Tensor | None = None  # (M,) bool


def alignment(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each exemplar over {word} + negatives, and the per-view margins
    cos(f, t) - max_j cos(f, z_j) (detached)."""
    positive = inputs.exemplars @ inputs.text  # (V,)
    if inputs.negatives.shape[0]:
        negative = inputs.exemplars @ inputs.negatives.T  # (V, N)
        logits = inputs.scale * torch.cat([positive[:, None], negative], dim=1)
        target = torch.zeros(inputs.exemplars.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, target), (positive - negative.max(dim=1).values).detach()
    # No negatives: cross-entropy over one class is constant, so pull the cosine up instead.
    return (1 - positive).mean(), positive.detach()


def coarse(inputs: LossInputs) -> torch.Tensor | None:
    """1 - cos between the word's and the anchor's coarse projections; None without an anchor
    or a coarse subspace."""
    k = min(inputs.k, inputs.feature_basis.shape[1])
    if inputs.anchor is None or k <= 0:
        return None
    basis = inputs.feature_basis[:, :k]
    word = (inputs.text - inputs.feature_mean) @ basis
    anchor = (inputs.anchor - inputs.feature_mean) @ basis
    return 1 - F.cosine_similarity(word, anchor, dim=0)


def fine(
    inputs: LossInputs,
    *,
    margin: float,
    kind: str = "hinge",
    temperature: float = 0.1,
) -> torch.Tensor | None:
    """Mean penalty on the fine-subspace cosines to the negatives above `margin` (hinge, or a
    softplus of sharpness `temperature`); None without negatives or a fine subspace."""
    k = min(inputs.k, inputs.feature_basis.shape[1])
    if not inputs.negatives.shape[0] or inputs.feature_basis.shape[1] <= k:
        return None
    basis = inputs.feature_basis[:, k:]
    word = (inputs.text - inputs.feature_mean) @ basis
    negatives = (inputs.negatives - inputs.feature_mean) @ basis
    cosines = F.cosine_similarity(word[None, :], negatives, dim=1)
    if kind == "hinge":
        penalty = F.relu(cosines - margin)
    else:
        penalty = temperature * F.softplus((cosines - margin) / temperature)
    return penalty.mean()


def evidence_logits(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For each evidence image: its logit for the new word (M,), and its logits for everything
    else it could be (M, 1 + N): its own word (-inf where it has none) and the negatives."""
    x = inputs.evidence
    if x is None or not x.shape[0]:
        return None
    assert inputs.evidence_own is not None and inputs.evidence_has_own is not None
    word = inputs.scale * (x @ inputs.text)
    own = (x * inputs.evidence_own).sum(dim=1)
    own = torch.where(inputs.evidence_has_own, inputs.scale * own, -torch.inf)
    others = torch.cat([own[:, None], inputs.scale * (x @ inputs.negatives.T)], dim=1)
    return word, others


def evidence(
    inputs: LossInputs, *, margin: float = 0.0, user_weight: float = 1.0
) -> torch.Tensor | None:
    """Mean of -log(1 - p_word) over the evidence images, p over {word, own word, negatives}:
    the gradient on the word's logit is p_word, as in a cross-entropy toward the image's own
    class, and images with no own word ("not this") are handled alike. With `margin`, the
    word's cosine counts `margin` higher (it must lose by that much to be left alone); images
    with no own word weigh `user_weight` each in the mean. None without evidence (or with
    nothing else an image could be)."""
    logits = evidence_logits(inputs)
    if logits is None:
        return None
    word, others = logits
    word = word + inputs.scale * margin
    rest = torch.logsumexp(others, dim=1)
    valid = torch.isfinite(rest)
    if not bool(valid.any()):
        return None
    total = torch.logsumexp(torch.cat([word[:, None], others], dim=1), dim=1)
    assert inputs.evidence_has_own is not None
    weights = torch.where(inputs.evidence_has_own[valid], 1.0, user_weight)
    return ((total - rest)[valid] * weights).sum() / weights.sum()


def class_loss(inputs: LossInputs, config: OptimizationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sum of the terms the config switches on, and the alignment margins."""
    loss, margins = alignment(inputs)
    if config.lambda_c > 0:
        term = coarse(inputs)
        if term is not None:
            loss = loss + config.lambda_c * term
    if config.lambda_f > 0:
        term = fine(
            inputs,
            margin=config.fine_margin,
            kind=config.fine_loss,
            temperature=config.fine_temperature,
        )
        if term is not None:
            loss = loss + config.lambda_f * term
    if config.lambda_img > 0:
        term = evidence(
            inputs, margin=config.evidence_margin, user_weight=config.user_negative_weight
        )
        if term is not None:
            loss = loss + config.lambda_img * term
    return loss, margins


__all__ = [
    "LossInputs",
    "alignment",
    "class_loss",
    "coarse",
    "evidence",
    "evidence_logits",
    "fine",
]
