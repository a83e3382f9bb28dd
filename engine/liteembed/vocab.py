"""Per-model vocabulary caches: the word list W, its text features Z_W and the two PCAs.

Computed once per model id + checkpoint hash and stored on disk; a file that fails any check
(unreadable, other format version, other model, checksum mismatch) is rebuilt, and files are
written to a temporary name and renamed so a crash never leaves a half-written cache behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from liteembed.backend import ClipBackend
from liteembed.errors import UnknownHintError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
WORD_TEMPLATE = "a photo of a {}."
MIN_WORD_LENGTH = 3
# progress(done, total): words encoded so far while a vocabulary cache is built.
Progress = Callable[[int, int], None]
_EIGEN_TOLERANCE = 1e-6  # eigenvalues below this fraction of the largest count as rank deficiency


@dataclass
class Vocabulary:
    model_id: str
    checkpoint_hash: str
    source: str  # "checkpoint" (declared words) or "bpe" (whole-word BPE entries)
    words: list[str]
    word_token_ids: list[list[int]]
    word_features: torch.Tensor  # (W, embed_dim), normalised
    token_ids: torch.Tensor  # (R,) rows of E that W uses; the rows the token PCA is built from
    token_mean: torch.Tensor  # (d_tok,)
    token_basis: torch.Tensor  # (d_tok, d_tok) orthonormal columns, by decreasing variance
    token_std: torch.Tensor  # (d_tok,) per-component std; 0 beyond token_rank
    token_rank: int
    feature_mean: torch.Tensor  # (embed_dim,)
    feature_basis: torch.Tensor  # (embed_dim, r) the components the word features span
    feature_explained: torch.Tensor  # (r,) explained-variance ratio per component

    def __post_init__(self) -> None:
        self._index = {word: i for i, word in enumerate(self.words)}

    def index(self, word: str) -> int | None:
        return self._index.get(word.strip().lower())

    def require_words(self, words: Iterable[str]) -> list[int]:
        """Indices of `words`; a word outside the vocabulary raises UnknownHintError."""
        indices = []
        for word in words:
            i = self.index(word)
            if i is None:
                raise UnknownHintError(
                    f"hint {word!r} is not a word of the vocabulary of {self.model_id}"
                    + (f" (e.g. {', '.join(self.words[:8])}, ...)" if self.words else "")
                )
            indices.append(i)
        return indices

    def is_trained_token(self, token_id: int) -> bool:
        """Whether a token row carries meaning: for a declared vocabulary only W's rows do."""
        if self.source != "checkpoint":
            return True
        return bool((self.token_ids == token_id).any())

    def state(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def cache_path(backend: ClipBackend, cache_dir: Path, max_words: int | None) -> Path:
    safe_id = re.sub(r"[^A-Za-z0-9._-]+", "_", backend.model_id)
    digest = hashlib.sha256(backend.checkpoint_hash.encode()).hexdigest()[:12]
    suffix = "" if max_words is None else f"-w{max_words}"
    return Path(cache_dir) / f"{safe_id}-{digest}{suffix}.pt"


def load_vocabulary(
    backend: ClipBackend,
    cache_dir: Path,
    *,
    max_words: int | None = None,
    progress: Progress | None = None,
) -> Vocabulary:
    """The model's vocabulary, from `cache_dir` when a valid file is there, else built and saved.

    `max_words` caps a BPE-derived vocabulary to its first entries (BPE order, i.e. by merge
    frequency); it keeps random-weight test models fast. Declared vocabularies are never capped.
    `progress(done, total)` follows the build, which takes minutes for a large model.
    """
    path = cache_path(backend, cache_dir, max_words)
    vocabulary = _read_cache(path, backend)
    if vocabulary is not None:
        return vocabulary
    vocabulary = build_vocabulary(backend, max_words=max_words, progress=progress)
    _write_cache(path, vocabulary)
    return vocabulary


def vocabulary_words(backend: ClipBackend, max_words: int | None = None) -> tuple[list[str], str]:
    if backend.vocabulary_words:
        seen: dict[str, None] = {}
        for word in backend.vocabulary_words:
            cleaned = word.strip().lower()
            if cleaned:
                seen.setdefault(cleaned)
        return list(seen), "checkpoint"
    encoder: dict[str, int] = getattr(backend.tokenizer, "encoder", {})
    entries = sorted(encoder.items(), key=lambda item: item[1])
    words = [
        token[: -len("</w>")]
        for token, _ in entries
        if token.endswith("</w>")
        and token[: -len("</w>")].isascii()
        and token[: -len("</w>")].isalpha()
        and len(token) - len("</w>") >= MIN_WORD_LENGTH
    ]
    if max_words is not None:
        words = words[:max_words]
    return words, "bpe"


def build_vocabulary(
    backend: ClipBackend, *, max_words: int | None = None, progress: Progress | None = None
) -> Vocabulary:
    words, source = vocabulary_words(backend, max_words)
    if len(words) < 2:
        raise ValueError(f"the vocabulary of {backend.model_id} has fewer than two words")
    word_token_ids = [backend.encode_word_tokens(word) for word in words]
    features = backend.encode_texts(
        [WORD_TEMPLATE.format(word) for word in words], progress=progress
    )
    token_ids = torch.tensor(sorted({t for ids in word_token_ids for t in ids}), dtype=torch.long)
    rows = backend.token_table[token_ids.to(backend.device)].cpu().double()
    token_mean, token_basis, token_var = _pca(rows)
    token_rank = _rank(token_var)
    token_std = token_var.clamp_min(0).sqrt()
    token_std[token_rank:] = 0.0
    feature_mean, feature_basis, feature_var = _pca(features.double())
    feature_rank = _rank(feature_var)
    explained = feature_var[:feature_rank] / feature_var[:feature_rank].sum()
    return Vocabulary(
        model_id=backend.model_id,
        checkpoint_hash=backend.checkpoint_hash,
        source=source,
        words=words,
        word_token_ids=word_token_ids,
        word_features=features.float(),
        token_ids=token_ids,
        token_mean=token_mean.float(),
        token_basis=token_basis.float(),
        token_std=token_std.float(),
        token_rank=token_rank,
        feature_mean=feature_mean.float(),
        feature_basis=feature_basis[:, :feature_rank].float(),
        feature_explained=explained.float(),
    )


def _pca(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, full orthonormal basis (columns, decreasing variance) and per-component variance.

    Eigen-decomposition of the d x d covariance rather than an SVD of the rows: it yields a basis
    of the whole space (the components beyond the rows' rank complete it) at a cost independent
    of the number of rows.
    """
    mean = rows.mean(dim=0)
    centered = rows - mean
    covariance = centered.T @ centered / max(rows.shape[0] - 1, 1)
    variances, vectors = torch.linalg.eigh(covariance)
    order = torch.argsort(variances, descending=True)
    variances, vectors = variances[order].clamp_min(0), vectors[:, order]
    # Fix each component's sign (largest entry positive) so rebuilt caches are identical.
    pivot = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[pivot, torch.arange(vectors.shape[1])])
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    return mean, vectors, variances


def _rank(variances: torch.Tensor) -> int:
    if variances.numel() == 0 or variances[0] <= 0:
        return 0
    return int((variances > variances[0] * _EIGEN_TOLERANCE).sum().item())


_TENSOR_FIELDS = (
    "word_features",
    "token_ids",
    "token_mean",
    "token_basis",
    "token_std",
    "feature_mean",
    "feature_basis",
    "feature_explained",
)


def _checksum(state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in ("model_id", "checkpoint_hash", "source", "token_rank"):
        digest.update(f"{key}={state[key]}\n".encode())
    digest.update("\n".join(state["words"]).encode())
    for ids in state["word_token_ids"]:
        digest.update(",".join(map(str, ids)).encode() + b";")
    for key in _TENSOR_FIELDS:
        tensor: torch.Tensor = state[key]
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, backend: ClipBackend) -> Vocabulary | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        problem = _cache_problem(payload, backend)
        if problem is None:
            state = {f.name: payload["vocabulary"][f.name] for f in fields(Vocabulary)}
            return Vocabulary(**state)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is simply rebuilt
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    log.warning("vocabulary cache %s is %s; rebuilding it", path, problem)
    return None


def _cache_problem(payload: Any, backend: ClipBackend) -> str | None:
    if not isinstance(payload, dict) or "vocabulary" not in payload:
        return "not a vocabulary cache"
    if payload.get("format") != CACHE_FORMAT:
        return f"of format {payload.get('format')!r}, expected {CACHE_FORMAT}"
    state = payload["vocabulary"]
    if (
        state.get("model_id") != backend.model_id
        or state.get("checkpoint_hash") != backend.checkpoint_hash
    ):
        return "stale (built for another model or checkpoint)"
    if not all(f.name in state for f in fields(Vocabulary)):
        return "incomplete"
    if payload.get("checksum") != _checksum(state):
        return "corrupt (checksum mismatch)"
    return None


def _write_cache(path: Path, vocabulary: Vocabulary) -> None:
    state = vocabulary.state()
    payload = {"format": CACHE_FORMAT, "vocabulary": state, "checksum": _checksum(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            torch.save(payload, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)  # atomic: readers see the old file or the whole new one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def words_in(text: str) -> list[str]:
    """Lower-case alphabetic words of `text` (keeps a name's own words out of the negatives)."""
    return re.findall(r"[a-z]+", text.lower())


__all__: Sequence[str] = [
    "Vocabulary",
    "build_vocabulary",
    "cache_path",
    "load_vocabulary",
    "words_in",
]
