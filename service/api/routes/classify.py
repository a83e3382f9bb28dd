"""Classify one image against the personalized classes and/or given labels."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile

from liteembed.names import name_key
from liteembed.vocab import WORD_TEMPLATE
from service.api.deps import (
    ClassifierDep,
    ClientDep,
    ModelRunnerDep,
    PreprocessPoolDep,
    RuntimeDep,
    SettingsDep,
)
from service.api.errors import responses
from service.api.schemas import ClassifyOut, Prediction
from service.api.uploads import error, read_image, validate_words
from service.core.config import Settings
from service.runtime import Runtime
from service.scoring.batcher import MatrixMismatch
from service.scoring.scorer import top_k_softmax

if TYPE_CHECKING:
    import torch

router = APIRouter(tags=["classify"])


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


_text_features = TextFeatureCache()


def _pixels(image: UploadFile, settings: Settings, runtime: Runtime) -> torch.Tensor:
    """Read, check, decode and preprocess the upload (on the preprocessing pool)."""
    checked = read_image(image, settings, field="image")
    return runtime.backend.preprocess_images([checked.image])  # type: ignore[no-any-return]


@router.post(
    "/v1/classify",
    response_model=ClassifyOut,
    dependencies=[ClientDep],
    summary="Score one image against the personalized classes or the given labels",
    responses=responses(400, 401, 403, 413, 415, 422, 503),
)
async def classify(
    settings: SettingsDep,
    runtime: RuntimeDep,
    classifier: ClassifierDep,
    runner: ModelRunnerDep,
    preprocess_pool: PreprocessPoolDep,
    image: Annotated[UploadFile, File(description="the image to classify")],
    labels: Annotated[
        list[str] | None,
        Form(description="candidate labels: registered class names or plain words"),
    ] = None,
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
) -> ClassifyOut:
    # async, so the event loop does only the cheap parts: decoding goes to the preprocessing
    # pool and the model to the model-runner thread, which batches concurrent requests.
    clean_labels = validate_words(labels, field="labels", limit=settings.max_labels)
    loop = asyncio.get_running_loop()
    with runner.incoming():
        pixels = await loop.run_in_executor(preprocess_pool, _pixels, image, settings, runtime)
        future = runner.encode(pixels, top_k=None if clean_labels else top_k)
    try:
        encoded = await asyncio.wrap_future(future)
    except MatrixMismatch:
        raise error(
            503, "the class matrix does not match the loaded model; try again shortly"
        ) from None

    if not clean_labels:
        snapshot = encoded.snapshot
        assert snapshot is not None and encoded.indices is not None and encoded.scores is not None
        return ClassifyOut(
            model=runtime.model_id,
            predictions=[
                Prediction(
                    label=snapshot.names[int(i)], score=float(p), class_id=snapshot.ids[int(i)]
                )
                for i, p in zip(encoded.indices, encoded.scores, strict=True)
            ],
        )

    snapshot = classifier.snapshot(runtime.model_id, int(runtime.backend.embed_dim))
    vectors: list[np.ndarray | None] = []
    class_ids: list[str | None] = []
    plain: list[str] = []
    for label in clean_labels:
        index = snapshot.index_of(name_key(label))
        if index is None:
            vectors.append(None)
            class_ids.append(None)
            plain.append(label)
        else:
            vectors.append(snapshot.vector(index))
            class_ids.append(snapshot.ids[index])
    # CLIP's own feature for a plain label, in the prompt the vocabulary features are built with.
    plain_features = _text_features.found(runtime.model_id, plain)
    missing = [label for label in plain if label not in plain_features]
    if missing:
        prompts = [WORD_TEMPLATE.format(label) for label in missing]
        # On the model thread too: a text forward pass would otherwise compete with the batches.
        features = await asyncio.wrap_future(
            runner.call(lambda: runtime.backend.encode_texts(prompts).float().cpu().numpy())
        )
        plain_features |= _text_features.add(runtime.model_id, missing, features)
    rows = zip(vectors, clean_labels, strict=True)
    matrix = np.stack([v if v is not None else plain_features[label] for v, label in rows])
    if matrix.shape[1] != encoded.feature.shape[0]:
        raise error(503, "the class matrix does not match the loaded model; try again shortly")
    indices, scores = top_k_softmax(
        matrix @ encoded.feature, float(runtime.backend.logit_scale), top_k
    )
    return ClassifyOut(
        model=runtime.model_id,
        predictions=[
            Prediction(label=clean_labels[int(i)], score=float(p), class_id=class_ids[int(i)])
            for i, p in zip(indices, scores, strict=True)
        ],
    )
