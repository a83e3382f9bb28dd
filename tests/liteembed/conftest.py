"""Shared fixtures: one tiny random-weight model and its (capped) vocabulary per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from liteembed import ClipBackend, Vocabulary, load_backend, load_vocabulary

VOCAB_WORDS = 500  # a capped BPE vocabulary keeps the cache build well under a second


@pytest.fixture(scope="session")
def backend() -> ClipBackend:
    return load_backend("liteembed-tiny", "random", device="cpu", seed=0)


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vocab-cache")


@pytest.fixture(scope="session")
def vocabulary(backend: ClipBackend, vocab_dir: Path) -> Vocabulary:
    return load_vocabulary(backend, vocab_dir, max_words=VOCAB_WORDS)
