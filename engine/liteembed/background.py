"""Known concepts as competitors: an image nearer to a word the model already knows than to the
class it was given is probably that word's thing, not the class.

A learned class's threshold (`liteembed.threshold`) says how similar an image must be to the
class; it cannot see that the image is even more like something else the model knows. The
reference bank's words (`liteembed.bank`: the concepts the operator holds real images of) are
those competitors, each by CLIP's own text feature of the word (as the service scores a plain
label). A prediction of a class is beaten when a background word is nearer to the image by more
than a margin:

    beaten = max over background words w of similarity(image, w) > similarity(image, class) + margin

Raw similarities, not each one's excess over its own threshold: a plain word's threshold (one
per model) and a learned class's (its own held-out images) are drawn differently, and on
validation their excesses did not compare (benchmarks/open_set.py: the known images' acceptance
fell to 14-66 %). A class is never its own competitor: a word named like it is left out
(`rival` per prediction, `Background.without` for a whole classifier). The margin is per model,
chosen on validation (`RECORDED_MARGINS`); a larger margin rejects less.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import torch

from liteembed.bank import ReferenceBank
from liteembed.names import name_key
from liteembed.vocab import Vocabulary

# Models whose margin was chosen on validation (benchmarks/open_set.py --split val_heldout and
# val_lookalike), by model id ("name@checkpoint") or bare name. Any other model: no rule unless
# the operator sets a margin.
RECORDED_MARGINS: dict[str, float] = {
    # At the cut that accepts 95 % of the known images, +1.4 points of the never-registered images
    # rejected on both validation splits, the never-seen ones not measurably fewer; margin 0
    # rejected as many but cost the known images twice as much at the stored thresholds.
    "liteembed-mini-v2@a03cbbb3c42e": 0.01,
}


@dataclass(frozen=True)
class Background:
    """The known concepts a prediction competes with: one row per word."""

    words: list[str]
    features: torch.Tensor  # (W, E) normalised text features, float32

    def __len__(self) -> int:
        return len(self.words)

    @cached_property
    def keys(self) -> list[str]:
        """Each word as a class name compares (`name_key`): a class is never its own rival."""
        return [name_key(w) for w in self.words]

    def without(self, names: Iterable[str]) -> Background:
        """These words less any named like one of `names` (compared as class names are)."""
        dropped = {name_key(n) for n in names}
        keep = [i for i, key in enumerate(self.keys) if key not in dropped]
        return Background(
            words=[self.words[i] for i in keep],
            features=self.features[torch.tensor(keep, dtype=torch.long)],
        )


def background_words(
    vocabulary: Vocabulary, bank: ReferenceBank | None, exclude: Iterable[str] = ()
) -> Background:
    """The bank's words that the vocabulary knows, less `exclude`, each with its text feature
    (the vocabulary's: the word template, as a plain label is scored). No bank: none."""
    words = [w for w in (bank.words if bank is not None else []) if vocabulary.index(w) is not None]
    rows = torch.tensor([vocabulary.index(w) for w in words], dtype=torch.long)
    features = vocabulary.word_features.float().cpu()[rows]
    return Background(words=words, features=features).without(exclude)


def nearest_background(
    features: torch.Tensor, background: Background
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) per image, the nearest background word and its similarity; without background
    words, index -1 and similarity -inf (nothing competes)."""
    count = features.shape[0]
    if not len(background):
        return torch.full((count,), -1, dtype=torch.long), torch.full((count,), -torch.inf)
    with torch.no_grad():
        similarity, index = (features.float() @ background.features.T).max(dim=1)
    return index, similarity


def rival(similarities: torch.Tensor, background: Background, name: str) -> int:
    """The nearest background word to one image (`similarities`: (W,) its similarity to each
    word) that is not named like the class `name`; -1 when there is none."""
    key = name_key(name)
    # Bank words are distinct, so at most one word shares the class's name: the nearest two
    # suffice, and a top-2 is O(W) where a full sort of a large bank per prediction is not.
    nearest = torch.topk(similarities, min(2, similarities.numel())).indices
    return next((int(i) for i in nearest if background.keys[int(i)] != key), -1)


def beaten(
    class_similarity: torch.Tensor | float, background_similarity: torch.Tensor, margin: float
) -> torch.Tensor:
    """(N,) bool (or one, for one image): the nearest background word is nearer than the class by
    more than `margin`."""
    return background_similarity > class_similarity + margin


def background_score(
    class_excess: torch.Tensor,
    class_similarity: torch.Tensor,
    background_similarity: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """One score whose sign is the decision, for ranking (AUROC, a cut at a known-acceptance
    rate): >= 0 exactly when the class clears its threshold (`class_excess`, its similarity
    minus its threshold, >= 0) and is not `beaten`."""
    return torch.minimum(class_excess, class_similarity - background_similarity + margin)


def recorded_margin(model_id: str) -> float | None:
    """The margin chosen on validation for `model_id` ("name@checkpoint", or a bare name)."""
    return RECORDED_MARGINS.get(model_id, RECORDED_MARGINS.get(model_id.split("@", 1)[0]))


__all__ = [
    "RECORDED_MARGINS",
    "Background",
    "background_score",
    "background_words",
    "beaten",
    "nearest_background",
    "recorded_margin",
    "rival",
]
