"""Vocabulary caches: contents, round trip, corrupt and stale files, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import liteembed.vocab as vocab_module
from liteembed import ClipBackend, UnknownHintError, Vocabulary, load_backend, load_vocabulary
from liteembed.vocab import cache_path

WORDS = 120


def _same(a: Vocabulary, b: Vocabulary) -> bool:
    return a.words == b.words and all(
        torch.equal(getattr(a, name), getattr(b, name))
        for name in ("word_features", "token_mean", "token_basis", "token_std", "feature_basis")
    )


def test_contents(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    assert vocabulary.source == "bpe"
    assert len(vocabulary.words) == 500
    assert all(w.isalpha() and len(w) >= 3 for w in vocabulary.words)
    expected = backend.encode_texts([f"a photo of a {w}." for w in vocabulary.words[:5]])
    assert (vocabulary.word_features[:5] - expected).abs().max().item() < 1e-5
    basis = vocabulary.token_basis
    assert basis.shape == (backend.token_dim, backend.token_dim)
    assert (basis.T @ basis - torch.eye(backend.token_dim)).abs().max().item() < 1e-4
    assert torch.all(vocabulary.token_std[:-1] >= vocabulary.token_std[1:])
    explained = vocabulary.feature_explained
    assert abs(explained.sum().item() - 1) < 1e-4
    assert torch.all(explained[:-1] >= explained[1:])
    assert vocabulary.feature_basis.shape == (backend.embed_dim, explained.numel())


def test_round_trip_reads_the_file(
    backend: ClipBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = load_vocabulary(backend, tmp_path, max_words=WORDS)
    assert cache_path(backend, tmp_path, WORDS).is_file()

    def no_rebuild(*args: object, **kwargs: object) -> Vocabulary:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(vocab_module, "build_vocabulary", no_rebuild)
    assert _same(load_vocabulary(backend, tmp_path, max_words=WORDS), built)


def test_corrupt_file_is_rebuilt(backend: ClipBackend, tmp_path: Path) -> None:
    built = load_vocabulary(backend, tmp_path, max_words=WORDS)
    path = cache_path(backend, tmp_path, WORDS)
    path.write_bytes(path.read_bytes()[:100])  # torn file
    assert _same(load_vocabulary(backend, tmp_path, max_words=WORDS), built)
    assert torch.load(path, weights_only=True)["format"] == vocab_module.CACHE_FORMAT


def test_tampered_and_stale_files_are_rebuilt(backend: ClipBackend, tmp_path: Path) -> None:
    built = load_vocabulary(backend, tmp_path, max_words=WORDS)
    path = cache_path(backend, tmp_path, WORDS)
    payload = torch.load(path, weights_only=True)
    payload["vocabulary"]["word_features"] = payload["vocabulary"]["word_features"] * 2
    torch.save(payload, path)  # still loads, but the checksum no longer matches
    assert _same(load_vocabulary(backend, tmp_path, max_words=WORDS), built)

    other = load_backend("liteembed-tiny", "random", device="cpu", seed=3)
    # A file built for another checkpoint, sitting under this model's name, is stale.
    load_vocabulary(other, tmp_path, max_words=WORDS)
    cache_path(other, tmp_path, WORDS).replace(path)
    assert _same(load_vocabulary(backend, tmp_path, max_words=WORDS), built)


def test_failed_write_leaves_nothing(
    backend: ClipBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(vocab_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        load_vocabulary(backend, tmp_path, max_words=WORDS)
    assert list(tmp_path.iterdir()) == []


def test_declared_vocabulary_wins(backend: ClipBackend, tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny.pt"
    words = ["red", "blue", "green", "circle", "square", "triangle", "hexagon"]
    torch.save({"state_dict": backend.model.state_dict(), "vocabulary": words}, checkpoint)
    declared = load_backend("liteembed-tiny", str(checkpoint), device="cpu")
    vocabulary = load_vocabulary(declared, tmp_path / "cache", max_words=3)
    assert vocabulary.source == "checkpoint"
    assert vocabulary.words == words  # the cap applies to BPE vocabularies only
    token_ids = {t for w in words for t in declared.encode_word_tokens(w)}
    assert set(vocabulary.token_ids.tolist()) == token_ids
    # Fewer rows than dimensions: the PCA spans only len(rows) - 1 of them.
    assert vocabulary.token_rank == len(token_ids) - 1
    assert torch.all(vocabulary.token_std[vocabulary.token_rank :] == 0)
    assert vocabulary.is_trained_token(declared.encode_word_tokens("red")[0])
    assert not vocabulary.is_trained_token(declared.encode_word_tokens("dog")[0])


def test_unknown_hint(vocabulary: Vocabulary) -> None:
    assert vocabulary.require_words([vocabulary.words[3].upper()]) == [3]
    with pytest.raises(UnknownHintError, match="zzzqqq"):
        vocabulary.require_words(["zzzqqq"])
