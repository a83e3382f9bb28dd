"""A reference bank: image features of a model, labelled by vocabulary word.

A new word takes the images of the classes nearest to it. What keeps it off them is evidence of
where their images lie, and text alone does not say (a word's text feature sits far from its
images). The bank holds a few image features per vocabulary word, so training can score the new
word against real images of the words it is mined against (`OptimizationConfig.bank_words`).

Built by an operator from a folder of their own images (one subfolder per word), or shipped beside
a checkpoint (`checkpoints/<model>.bank.pt`, built from the model's own training world). It holds
features only, never images, and belongs to one model id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from liteembed.augment import as_rgb
from liteembed.backend import CHECKPOINT_DIR, ClipBackend
from liteembed.errors import CheckpointError
from liteembed.requests import ImageData
from liteembed.threshold import acceptance_threshold, noise_ceiling, noise_features
from liteembed.vocab import Vocabulary

BANK_FORMAT = 1


@dataclass(frozen=True)
class ReferenceBank:
    model_id: str
    words: list[str]
    features: torch.Tensor  # (N, E) normalised image features, float32
    labels: torch.Tensor  # (N,) index into `words`
    # The acceptance threshold of a plain word on this model (`liteembed.threshold`).
    word_threshold: float | None = None

    def images_of(self, word: str, limit: int | None = None) -> torch.Tensor:
        """(n, E) features labelled `word` (n = 0 when the bank has none)."""
        try:
            index = self.words.index(word)
        except ValueError:
            return self.features[:0]
        found = self.features[self.labels == index]
        return found if limit is None else found[:limit]

    def __contains__(self, word: object) -> bool:
        return word in self.words

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": BANK_FORMAT,
            "model_id": self.model_id,
            "words": list(self.words),
            "features": self.features.half().cpu(),
            "labels": self.labels.to(torch.int32).cpu(),
            "word_threshold": self.word_threshold,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)


def load_bank(path: Path, model_id: str) -> ReferenceBank:
    """The bank at `path`; CheckpointError when it is unreadable or of another model."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
        raise CheckpointError(f"reference bank {path} cannot be read: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != BANK_FORMAT:
        raise CheckpointError(f"reference bank {path} is not a bank of format {BANK_FORMAT}")
    if payload.get("model_id") != model_id:
        raise CheckpointError(
            f"reference bank {path} belongs to {payload.get('model_id')}, not {model_id}"
        )
    return ReferenceBank(
        model_id=model_id,
        words=list(payload["words"]),
        features=payload["features"].float(),
        labels=payload["labels"].long(),
        word_threshold=payload.get("word_threshold"),
    )


def shipped_bank_path(model_name: str) -> Path:
    return CHECKPOINT_DIR / f"{model_name}.bank.pt"


def find_bank(backend: ClipBackend, cache_dir: Path | None = None) -> ReferenceBank | None:
    """The bank for `backend`'s model: an operator's in `cache_dir/banks/`, else the one shipped
    beside its checkpoint; None when there is neither."""
    candidates = []
    if cache_dir is not None:
        candidates.append(bank_cache_path(cache_dir, backend.model_id))
    candidates.append(shipped_bank_path(backend.model_id.split("@")[0]))
    for path in candidates:
        if path.is_file():
            try:
                return load_bank(path, backend.model_id)
            except CheckpointError:
                continue  # a bank of an earlier checkpoint under the same name: not this model's
    return None


def bank_cache_path(cache_dir: Path, model_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    return cache_dir / "banks" / f"{safe}.bank.pt"


def build_bank(
    backend: ClipBackend,
    vocabulary: Vocabulary,
    images_by_word: Mapping[str, Sequence[ImageData]],
    *,
    per_word: int = 16,
    beta: float = 0.5,
) -> ReferenceBank:
    """Encode up to `per_word` images of each vocabulary word (words the model does not know
    are refused: a bank labels images by the model's own words)."""
    vocabulary.require_words(list(images_by_word))
    words: list[str] = []
    chunks: list[torch.Tensor] = []
    labels: list[int] = []
    for word, images in images_by_word.items():
        chosen = list(images)[:per_word]
        if not chosen:
            continue
        features = backend.encode_images([as_rgb(i, backend.decode_side) for i in chosen])
        chunks.append(F.normalize(features.float().cpu(), dim=-1))
        labels += [len(words)] * len(chosen)
        words.append(word)
    if not chunks:
        raise ValueError("a reference bank needs images of at least one word")
    bank = ReferenceBank(
        model_id=backend.model_id,
        words=words,
        features=torch.cat(chunks),
        labels=torch.tensor(labels),
    )
    threshold = word_threshold(bank, vocabulary, noise_features(backend).float().cpu(), beta)
    return ReferenceBank(**{**bank.__dict__, "word_threshold": threshold})


def word_threshold(
    bank: ReferenceBank, vocabulary: Vocabulary, noise: torch.Tensor, beta: float
) -> float:
    """The median over the bank's words of each word's own threshold: its images against the
    other words' images and noise, and never below the noise's highest similarity to it."""
    word_features = vocabulary.word_features.float().cpu()
    values = []
    for index, word in enumerate(bank.words):
        row = vocabulary.index(word)
        if row is None:
            continue
        feature = word_features[row]
        own = bank.labels == index
        negatives = torch.cat([bank.features[~own], noise]) @ feature
        rule = acceptance_threshold(bank.features[own] @ feature, negatives, beta)
        values.append(max(rule, noise_ceiling(noise @ feature)))
    return float(torch.tensor(values).median()) if values else float("nan")


def plain_word_threshold(
    backend: ClipBackend, vocabulary: Vocabulary, bank: ReferenceBank | None
) -> float:
    """The acceptance threshold of a plain vocabulary word on this model: the reference bank's
    (its words' images against other words' images and noise) when there is one, else the
    highest similarity of any noise image to any word (without images of real things, the one
    line that can be drawn is "more like a word than noise is")."""
    if bank is not None and bank.word_threshold is not None and not math.isnan(bank.word_threshold):
        return float(bank.word_threshold)
    noise = noise_features(backend).float().cpu()
    return float((noise @ vocabulary.word_features.float().cpu().T).max())


__all__ = [
    "ReferenceBank",
    "plain_word_threshold",
    "bank_cache_path",
    "build_bank",
    "find_bank",
    "load_bank",
    "shipped_bank_path",
    "word_threshold",
]
