"""Labels a /classify names: a registered class by its learned feature (and id), any other word
by CLIP's own text feature of the word template, cached across requests."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from liteembed.names import name_key
from liteembed.threshold import word_thresholds
from liteembed.vocab import WORD_TEMPLATE
from service.runtime import Runtime
from service.scoring.batcher import ModelRunner
from service.scoring.matrix import scoped_key
from service.scoring.sync import ClassMatrixCache


class TextFeatureCache:
    """Plain-label text features, shared across requests (labels repeat a lot)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def found(self, model_id: str, labels: list[str]) -> dict[str, np.ndarray]:
        """The cached features among `labels`; the caller keeps them, so a later eviction by a
        concurrent request cannot take one away between this call and their use."""
        with self._lock:
            return {
                label: self._items[(model_id, label)]
                for label in labels
                if (model_id, label) in self._items
            }

    def add(self, model_id: str, labels: list[str], features: np.ndarray) -> dict[str, np.ndarray]:
        added = {
            label: np.ascontiguousarray(feature, dtype=np.float32)
            for label, feature in zip(labels, features, strict=True)
        }
        with self._lock:
            for label, feature in added.items():
                self._items[(model_id, label)] = feature
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return added


@dataclass(frozen=True)
class LabelMatrix:
    """One row per label, in the order given; `class_ids[i]` is None for a plain word."""

    labels: list[str]
    class_ids: list[str | None]
    matrix: np.ndarray  # (labels, embed_dim), float32
    # (labels,) float64 acceptance thresholds: a registered class's own (NaN where it has none),
    # for a plain word the model's plain-word threshold raised to the word's noise ceiling.
    thresholds: np.ndarray


async def label_matrix(
    labels: list[str],
    *,
    tenant: str,
    runtime: Runtime,
    classifier: ClassMatrixCache,
    runner: ModelRunner,
    text_features: TextFeatureCache,
) -> LabelMatrix:
    """The features of `labels`: registered names of `tenant` from the class matrix, every other
    word CLIP's own (computed on the model thread when not cached)."""
    snapshot = classifier.snapshot(runtime.model_id, int(runtime.backend.embed_dim))
    vectors: list[np.ndarray | None] = []
    class_ids: list[str | None] = []
    thresholds: list[float] = []
    plain: list[str] = []
    for label in labels:
        index = snapshot.index_of(scoped_key(tenant, name_key(label)))
        if index is None:
            vectors.append(None)
            class_ids.append(None)
            thresholds.append(float("nan"))  # set below, from the word's feature
            plain.append(label)
        else:
            vectors.append(snapshot.vector(index))
            class_ids.append(snapshot.ids[index])
            thresholds.append(float(snapshot.thresholds_of(np.array([index]))[0]))
    # CLIP's own feature for a plain label, in the prompt the vocabulary features are built with.
    plain_features = text_features.found(runtime.model_id, plain)
    missing = [label for label in plain if label not in plain_features]
    if missing:
        prompts = [WORD_TEMPLATE.format(label) for label in missing]
        # On the model thread too: a text forward pass would otherwise compete with the batches.
        features = await asyncio.wrap_future(
            runner.call(lambda: runtime.backend.encode_texts(prompts).float().cpu().numpy())
        )
        plain_features |= text_features.add(runtime.model_id, missing, features)
    rows = zip(vectors, labels, strict=True)
    matrix = np.stack([v if v is not None else plain_features[label] for v, label in rows])
    limits = np.asarray(thresholds, dtype=np.float64)
    words = np.array([v is None for v in vectors])
    if words.any():
        # As the engine scores a plain word: the model's threshold, raised to its noise ceiling.
        noise = torch.from_numpy(runtime.noise)
        raised = word_thresholds(torch.from_numpy(matrix[words]), noise, runtime.word_threshold)
        limits[words] = raised.double().numpy()
    return LabelMatrix(
        labels=list(labels),
        class_ids=class_ids,
        matrix=matrix,
        thresholds=limits,
    )
