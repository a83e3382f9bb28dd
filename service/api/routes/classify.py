"""Classify one image against the personalized classes and/or given labels."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile

from service.api.deps import ClassifierDep, ClientDep, RuntimeDep, SettingsDep
from service.api.schemas import ClassifyOut, Prediction
from service.api.uploads import error, name_key, read_image, validate_words
from service.classifier import softmax
from service.engine import Runtime

router = APIRouter(tags=["classify"])

# CLIP's own text feature for a plain label: the prompt the vocabulary features are built with.
PLAIN_LABEL_TEMPLATE = "a photo of a {}."


class TextFeatureCache:
    """Plain-label text features, shared across requests (labels repeat a lot)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, runtime: Runtime, labels: list[str]) -> list[np.ndarray]:
        keys = [(runtime.model_id, label) for label in labels]
        with self._lock:
            missing = [k[1] for k in keys if k not in self._items]
        if missing:
            prompts = [PLAIN_LABEL_TEMPLATE.format(label) for label in missing]
            features = runtime.backend.encode_texts(prompts).float().cpu().numpy()
            with self._lock:
                for label, feature in zip(missing, features, strict=True):
                    self._items[(runtime.model_id, label)] = np.ascontiguousarray(feature)
                while len(self._items) > self._capacity:
                    self._items.popitem(last=False)
        with self._lock:
            return [self._items[k] for k in keys]


_text_features = TextFeatureCache()


@router.post(
    "/v1/classify",
    response_model=ClassifyOut,
    dependencies=[ClientDep],
    summary="Score one image against the personalized classes or the given labels",
)
def classify(
    settings: SettingsDep,
    runtime: RuntimeDep,
    classifier: ClassifierDep,
    image: Annotated[UploadFile, File(description="the image to classify")],
    labels: Annotated[
        list[str] | None,
        Form(description="candidate labels: registered class names or plain words"),
    ] = None,
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
) -> ClassifyOut:
    clean_labels = validate_words(labels, settings, field="labels", limit=settings.max_labels)
    checked = read_image(image, settings, field="image")
    feature = runtime.backend.encode_images([checked.image])[0].float().cpu().numpy()

    snapshot = classifier.snapshot(runtime.model_id, int(runtime.backend.embed_dim))
    if clean_labels:
        vectors: list[np.ndarray | None] = []
        class_ids: list[str | None] = []
        plain: list[str] = []
        for label in clean_labels:
            index = snapshot.index_by_key.get(name_key(label))
            if index is None:
                vectors.append(None)
                class_ids.append(None)
                plain.append(label)
            else:
                vectors.append(snapshot.matrix[index])
                class_ids.append(snapshot.ids[index])
        plain_features = iter(_text_features.get(runtime, plain))
        matrix = np.stack([v if v is not None else next(plain_features) for v in vectors])
        names = clean_labels
    else:
        matrix, names, class_ids = snapshot.matrix, list(snapshot.names), list(snapshot.ids)

    if matrix.shape[0] == 0:
        return ClassifyOut(model=runtime.model_id, predictions=[])
    if matrix.shape[1] != feature.shape[0]:
        raise error(503, "the class matrix does not match the loaded model; try again shortly")
    logits = float(runtime.backend.logit_scale) * (matrix @ feature)
    scores = softmax(logits.astype(np.float64))
    order = np.argsort(-scores, kind="stable")[:top_k]
    return ClassifyOut(
        model=runtime.model_id,
        predictions=[
            Prediction(label=names[i], score=float(scores[i]), class_id=class_ids[i]) for i in order
        ],
    )
