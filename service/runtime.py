"""The model, loaded once per process, lazily, and shared by the API and the embedded worker.

Nothing here runs at import time: the worker process must create its CUDA context itself, after
any fork, and the API must start answering /healthz before a large model has finished loading.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from service.core.config import Settings

if TYPE_CHECKING:  # importing liteembed loads torch; the API starts answering before that
    from liteembed.backend import ClipBackend
    from liteembed.background import Background
    from liteembed.bank import ReferenceBank
    from liteembed.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The loaded model and its vocabulary: what every request and training job works with."""

    backend: ClipBackend
    vocabulary: Vocabulary
    vocabulary_words: frozenset[str]
    # Images of vocabulary words the model's new words are trained not to take (None: the model
    # has none), loaded once here rather than per training job.
    bank: ReferenceBank | None = None
    # Raw cosine at or above which an image is accepted as a plain word (and as a registered
    # class that has no threshold of its own).
    word_threshold: float = float("nan")
    # (N, E) float32 features of the engine's noise images: a plain word's threshold is raised to
    # its own noise ceiling (liteembed.threshold.word_thresholds). Empty: no raise.
    noise: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    # Noise-likeness above which an image is taken for noise (liteembed.threshold.noise_gate,
    # from the reference bank's real images); NaN: no gate.
    noise_gate: float = float("nan")
    # The reference bank's words a registered class's prediction competes with
    # (liteembed.background); None: no bank, no competitors.
    background: Background | None = None

    @property
    def model_id(self) -> str:
        return str(self.backend.model_id)


class LoadProgress:
    """How far loading has come, for /readyz and the log: the stage, and for the vocabulary cache
    build (minutes for a large model on CPU) the words encoded so far."""

    # Log a line at most this often while the vocabulary cache is built.
    LOG_EVERY_S = 10.0

    def __init__(self) -> None:
        self.stage = "waiting"
        self.done = 0
        self.total = 0
        self._logged_at = 0.0

    def enter(self, stage: str) -> None:
        self.stage, self.done, self.total = stage, 0, 0

    def words(self, done: int, total: int) -> None:
        self.stage, self.done, self.total = "vocabulary cache", done, total
        now = time.monotonic()
        if done == total or now - self._logged_at >= self.LOG_EVERY_S:
            self._logged_at = now
            log.info("building the vocabulary cache: %d/%d words encoded", done, total)

    def as_dict(self) -> dict[str, Any]:
        if self.total:
            return {"stage": self.stage, "done": self.done, "total": self.total}
        return {"stage": self.stage}


class RuntimeHolder:
    """Loads the runtime at most once; records the failure so /readyz can say why."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self.error: str | None = None
        self.progress = LoadProgress()

    @property
    def loaded(self) -> Runtime | None:
        return self._runtime

    def get(self) -> Runtime:
        if self._runtime is not None:
            return self._runtime
        with self._lock:
            if self._runtime is None:
                try:
                    self._runtime = load_runtime(self._settings, self.progress)
                    self.error = None
                except Exception as exc:
                    self.progress.enter("failed")
                    self.error = f"{type(exc).__name__}: {exc}"
                    log.exception("loading the model failed")
                    raise
        return self._runtime


def load_runtime(settings: Settings, progress: LoadProgress | None = None) -> Runtime:
    """The model and its vocabulary (from the cache in `settings.cache_dir`, built on a miss),
    its reference bank and its plain-word acceptance threshold."""
    from liteembed.backend import load_backend
    from liteembed.background import background_words
    from liteembed.bank import find_bank, plain_word_threshold
    from liteembed.threshold import noise_features, noise_gate
    from liteembed.vocab import load_vocabulary

    progress = progress or LoadProgress()
    progress.enter("model")
    if settings.torch_threads is not None:
        import torch

        # Before the first torch op of the model thread: each thread copies the count on first use.
        torch.set_num_threads(settings.torch_threads)
    log.info("loading model %s (%s) on %s", settings.model, settings.pretrained, settings.device)
    backend = load_backend(
        settings.model,
        settings.pretrained,
        device=settings.device,
        precision=settings.precision,
        seed=settings.seed,
    )
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    progress.enter("vocabulary cache")
    vocabulary = load_vocabulary(backend, settings.cache_dir, progress=progress.words)
    words = frozenset(w.casefold() for w in vocabulary.words)
    progress.enter("reference bank")
    bank = find_bank(backend, settings.cache_dir)
    word_threshold = plain_word_threshold(backend, vocabulary, bank)
    # Every learned class's threshold and every plain label's scores the noise images: encoded
    # here (a second or two on CPU), not by the first registration or request.
    noise_tensor = noise_features(backend).float().cpu()
    gate = noise_gate(bank.features, noise_tensor) if bank is not None else float("nan")
    progress.enter("ready")
    log.info(
        "model %s ready (dim %d, %d words, %s, plain-word threshold %.4f)",
        backend.model_id,
        backend.embed_dim,
        len(words),
        f"reference bank of {len(bank.words)} words" if bank is not None else "no reference bank",
        word_threshold,
    )
    return Runtime(
        backend=backend,
        vocabulary=vocabulary,
        vocabulary_words=words,
        bank=bank,
        word_threshold=word_threshold,
        noise=noise_tensor.numpy(),
        noise_gate=gate,
        background=background_words(vocabulary, bank) if bank is not None else None,
    )
