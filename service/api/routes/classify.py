"""Classify images (one, or a batch) against the personalized classes and/or given labels."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from fastapi import APIRouter

from liteembed.names import name_key
from liteembed.vocab import WORD_TEMPLATE
from service.api.bodies import ClassifyBodyDep
from service.api.deps import (
    ClassifierDep,
    ClientDep,
    ModelRunnerDep,
    PreprocessPoolDep,
    RuntimeDep,
    SettingsDep,
    TenantScopeDep,
)
from service.api.encoding import encode_images
from service.api.errors import responses
from service.api.openapi import request_body
from service.api.schemas import (
    BodyClassify,
    ClassifyBatchOut,
    ClassifyJson,
    ClassifyOut,
    ImagePredictions,
    Prediction,
)
from service.api.uploads import error, validate_words
from service.core.config import Settings
from service.models import DEFAULT_TENANT
from service.runtime import Runtime
from service.scoring.batcher import Encoded, ModelRunner
from service.scoring.matrix import scoped_key
from service.scoring.scorer import top_k_softmax
from service.scoring.sync import ClassMatrixCache

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


@router.post(
    "/v1/classify",
    response_model=ClassifyOut | ClassifyBatchOut,
    dependencies=[ClientDep],
    summary="Score one image, or several, against the personalized classes or the given labels",
    description="Multipart. The same body as JSON (base64 images) is `classify_json`; this path "
    "accepts it too.",
    responses=responses(400, 401, 403, 413, 415, 422, 503),
    openapi_extra=request_body(BodyClassify, "multipart/form-data"),
)
# The same handler as its own operation with a JSON body (one typed body per operation).
@router.post(
    "/v1/classify:json",
    name="classify_json",
    response_model=ClassifyOut | ClassifyBatchOut,
    dependencies=[ClientDep],
    summary="`classify` with a JSON body: images base64-encoded",
    responses=responses(400, 401, 403, 413, 415, 422, 503),
    openapi_extra=request_body(ClassifyJson, "application/json"),
)
async def classify(
    settings: SettingsDep,
    runtime: RuntimeDep,
    classifier: ClassifierDep,
    runner: ModelRunnerDep,
    preprocess_pool: PreprocessPoolDep,
    scope: TenantScopeDep,
    body: ClassifyBodyDep,
) -> ClassifyOut | ClassifyBatchOut:
    # async, so the event loop does only the cheap parts: decoding goes to the preprocessing
    # pool and the model to the model-runner thread, which batches concurrent requests.
    labels, top_k = body.fields.labels, body.fields.top_k
    clean_labels = validate_words(labels, field="labels", limit=settings.max_labels)
    await _classes_current(settings, runtime, classifier)
    encoded = await encode_images(
        body.images,
        top_k=None if clean_labels else top_k,
        tenant=scope,
        settings=settings,
        runtime=runtime,
        runner=runner,
        pool=preprocess_pool,
    )
    if clean_labels:
        score = await _label_scorer(clean_labels, top_k, scope, runtime, classifier, runner)
        ranked = [score(one) for one in encoded]
    else:
        ranked = [_class_predictions(one) for one in encoded]
    if not body.batch:
        return ClassifyOut(model=runtime.model_id, predictions=ranked[0])
    return ClassifyBatchOut(
        model=runtime.model_id,
        results=[ImagePredictions(predictions=predictions) for predictions in ranked],
    )


async def _classes_current(
    settings: Settings, runtime: Runtime, classifier: ClassMatrixCache
) -> None:
    """Have the class matrix hold every class change committed before this request started
    (`ready` answered by any API process means classifiable), before any image is scored. A
    database that cannot be read answers 503 (the app's database handler): unconfirmed, the
    class list is not guessed."""
    if not settings.classify_checks_generation:
        return
    dim = int(runtime.backend.embed_dim)
    await asyncio.get_running_loop().run_in_executor(
        None, classifier.catch_up, runtime.model_id, dim
    )


def _class_predictions(encoded: Encoded) -> list[Prediction]:
    """The top classes of the class matrix, as the runner scored them."""
    snapshot = encoded.snapshot
    assert snapshot is not None and encoded.indices is not None and encoded.scores is not None
    return [
        Prediction(label=snapshot.names[int(i)], score=float(p), class_id=snapshot.ids[int(i)])
        for i, p in zip(encoded.indices, encoded.scores, strict=True)
    ]


async def _label_scorer(
    clean_labels: list[str],
    top_k: int,
    scope: str | None,
    runtime: Runtime,
    classifier: ClassMatrixCache,
    runner: ModelRunner,
) -> Callable[[Encoded], list[Prediction]]:
    """Ranks an image among `clean_labels`: a registered class by its learned feature (and id),
    any other word by CLIP's own; the label matrix is built once for all the request's images."""
    snapshot = classifier.snapshot(runtime.model_id, int(runtime.backend.embed_dim))
    vectors: list[np.ndarray | None] = []
    class_ids: list[str | None] = []
    plain: list[str] = []
    # Registered names resolve within the caller's tenant (an admin's: `default`, or ?tenant=).
    tenant = scope or DEFAULT_TENANT
    for label in clean_labels:
        index = snapshot.index_of(scoped_key(tenant, name_key(label)))
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
    scale = float(runtime.backend.logit_scale)

    def score(encoded: Encoded) -> list[Prediction]:
        if matrix.shape[1] != encoded.feature.shape[0]:
            raise error(503, "the class matrix does not match the loaded model; try again shortly")
        indices, scores = top_k_softmax(matrix @ encoded.feature, scale, top_k)
        return [
            Prediction(label=clean_labels[int(i)], score=float(p), class_id=class_ids[int(i)])
            for i, p in zip(indices, scores, strict=True)
        ]

    return score
