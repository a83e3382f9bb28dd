"""Image evidence: images of other things a class's word must not win.

Three sources, each a set of image features with the text feature of the class they belong to
(their "own" word) where there is one:
- registered classes (`ProtectedClass`): the `m_protected` nearest to the class, all their
  exemplars, their current text feature as own word;
- the reference bank (`liteembed.bank`): images of the class's `bank_words` nearest mined
  vocabulary words that the bank has, `bank_images` each, the word's feature as own word;
- the request's `negative_images` ("not this"), with no own word.
The loss term (`liteembed.losses.evidence`) asks that the new word not be the best match of any
of them; the step rule scores how many it leaves alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from liteembed.bank import ReferenceBank
from liteembed.config import OptimizationConfig
from liteembed.requests import ProtectedClass
from liteembed.vocab import Vocabulary


@dataclass(frozen=True)
class Evidence:
    features: torch.Tensor  # (M, E) image features
    own: torch.Tensor  # (M, E) text feature of each image's class (zeros where it has none)
    has_own: torch.Tensor  # (M,) bool
    # Per source group, for the diagnostics: name, source and image count.
    groups: list[dict[str, object]] = field(default_factory=list)

    @staticmethod
    def empty(dim: int, device: torch.device) -> Evidence:
        zeros = torch.zeros(0, dim, device=device)
        return Evidence(zeros, zeros, torch.zeros(0, dtype=torch.bool, device=device))


def gather_evidence(
    *,
    name: str,
    prototype: torch.Tensor,
    mined: torch.Tensor,
    vocabulary: Vocabulary,
    word_features: torch.Tensor,
    bank: ReferenceBank | None,
    protected: Sequence[ProtectedClass],
    user_negatives: torch.Tensor,
    config: OptimizationConfig,
) -> Evidence:
    """The evidence of one class; `mined` are its vocabulary negatives' indices, nearest first."""
    device, dim = prototype.device, prototype.shape[0]
    features: list[torch.Tensor] = []
    owns: list[torch.Tensor] = []
    flags: list[torch.Tensor] = []
    groups: list[dict[str, object]] = []

    def add(images: torch.Tensor, own: torch.Tensor | None, label: str, source: str) -> None:
        images = F.normalize(images.to(device).float(), dim=-1)
        count = images.shape[0]
        if not count:
            return
        features.append(images)
        if own is None:
            owns.append(torch.zeros(count, dim, device=device))
            flags.append(torch.zeros(count, dtype=torch.bool, device=device))
        else:
            owns.append(F.normalize(own.to(device).float(), dim=-1).expand(count, dim))
            flags.append(torch.ones(count, dtype=torch.bool, device=device))
        groups.append({"name": label, "source": source, "images": count})

    if config.lambda_img > 0 or config.holdout_evidence:
        key = name.strip().lower()
        others = [p for p in protected if p.name.strip().lower() != key and len(p.image_features)]
        if others and config.m_protected > 0:
            centres = torch.stack(
                [F.normalize(p.image_features.float().mean(dim=0), dim=-1) for p in others]
            ).to(device)
            order = torch.argsort(centres @ prototype, descending=True)[: config.m_protected]
            for index in order.tolist():
                add(others[index].image_features, others[index].feature, others[index].name,
                    "registered")  # fmt: skip
        if bank is not None and config.bank_words > 0:
            taken = 0
            for row in mined.tolist():
                word = vocabulary.words[row]
                images = bank.images_of(word, config.bank_images)
                if len(images):
                    add(images, word_features[row], word, "bank")
                    taken += 1
                    if taken == config.bank_words:
                        break
    add(user_negatives, None, "negative images", "user")
    if not features:
        return Evidence.empty(dim, device)
    return Evidence(torch.cat(features), torch.cat(owns), torch.cat(flags), groups)


__all__ = ["Evidence", "gather_evidence"]
