"""Classify images (one, or a batch) against the personalized classes and/or given labels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi import APIRouter, Response

from service.api.bodies import ClassifyBodyDep
from service.api.deps import ImageModelDep, SettingsDep, TenantScopeDep
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
from service.metrics import STALE_HEADER
from service.models import DEFAULT_TENANT
from service.runtime import Runtime
from service.scoring.acceptance import (
    accepted,
    background_margin,
    looks_like_noise,
    nearer_known,
)
from service.scoring.batcher import Encoded, ModelRunner
from service.scoring.labels import TextFeatureCache, label_matrix
from service.scoring.scorer import top_k_softmax
from service.scoring.sync import ClassMatrixCache

router = APIRouter(tags=["classify"])


@router.post(
    "/v1/classify",
    response_model=ClassifyOut | ClassifyBatchOut,
    summary="Score one image, or several, against the personalized classes or the given labels",
    description="Multipart. The same body as JSON (base64 images) is `classify_json`; this path "
    "accepts it too. One image may also be the body itself (`Content-Type: image/jpeg`, "
    "`image/png`, ... or `application/octet-stream`), with `top_k`, `labels` and `abstain` in "
    "the query string: nothing to build or parse, the fastest way to send one image.",
    responses=responses(400, 401, 403, 413, 415, 422, 503),
    openapi_extra=request_body(BodyClassify, "multipart/form-data"),
)
# The same handler as its own operation with a JSON body (one typed body per operation).
@router.post(
    "/v1/classify:json",
    name="classify_json",
    response_model=ClassifyOut | ClassifyBatchOut,
    summary="`classify` with a JSON body: images base64-encoded",
    responses=responses(400, 401, 403, 413, 415, 422, 503),
    openapi_extra=request_body(ClassifyJson, "application/json"),
)
async def classify(
    response: Response,
    # First: it authenticates the caller (and counts its rate limit) before anything else.
    scope: TenantScopeDep,
    settings: SettingsDep,
    model: ImageModelDep,
    body: ClassifyBodyDep,
) -> ClassifyOut | ClassifyBatchOut:
    # async, so the event loop does only the cheap parts: decoding goes to the preprocessing
    # pool and the model to the model-runner thread, which batches concurrent requests.
    runtime, classifier = model.runtime, model.classifier
    labels, top_k = body.fields.labels, body.fields.top_k
    clean_labels = validate_words(labels, field="labels", limit=settings.max_labels)
    # The class generation is read on the preprocessing thread, just before the image decodes:
    # the matrix is caught up before anything is scored, its error answering first.
    caught_up = _CaughtUp(settings, runtime, classifier)
    encoded = await encode_images(
        body.images,
        top_k=None if clean_labels else top_k,
        tenant=scope,
        settings=settings,
        runtime=runtime,
        runner=model.runner,
        pool=model.pool,
        before_scoring=caught_up if settings.classify_checks_generation else None,
    )
    if not caught_up.current:
        response.headers[STALE_HEADER] = "true"
    margin = background_margin(settings, runtime.model_id)
    if clean_labels:
        score = await _label_scorer(
            clean_labels,
            top_k,
            scope,
            runtime,
            classifier,
            model.runner,
            model.text_features,
            margin,
        )
        ranked = [score(one) for one in encoded]
        if model.bank is not None:
            # Before `abstain` filters: the top answer as scored. Queued, never waited for.
            model.bank.observe(
                model_id=runtime.model_id,
                tenant=scope or DEFAULT_TENANT,
                vocabulary=runtime.vocabulary,
                features=[one.feature for one in encoded],
                ranked=ranked,
            )
    else:
        ranked = [_class_predictions(one, runtime, margin) for one in encoded]
    if body.fields.abstain:
        # After the top-k: an image of none of the labels is answered with no prediction.
        ranked = [[p for p in predictions if p.accepted] for predictions in ranked]
    if not body.batch:
        return ClassifyOut(model=runtime.model_id, predictions=ranked[0])
    return ClassifyBatchOut(
        model=runtime.model_id,
        results=[ImagePredictions(predictions=predictions) for predictions in ranked],
    )


class _CaughtUp:
    """Has the class matrix hold every class change committed before this request started
    (`ready` answered by any API process means classifiable), before any image is scored; a
    blocking call, made on the preprocessing pool.

    `current` is False when the database cannot be reached: the request is answered from the
    matrix this process holds, which misses only what changed since its last sync (the caller
    marks the answer stale). With CLASSIFY_DURING_DATABASE_OUTAGE=false, or before any matrix
    is held, that is a 503 (the app's database handler) instead."""

    def __init__(self, settings: Settings, runtime: Runtime, classifier: ClassMatrixCache) -> None:
        self._settings = settings
        self._runtime = runtime
        self._classifier = classifier
        self.current = True

    def __call__(self) -> None:
        self.current = self._classifier.catch_up(
            self._runtime.model_id,
            int(self._runtime.backend.embed_dim),
            stale_ok=self._settings.classify_during_database_outage,
        )


def _class_predictions(encoded: Encoded, runtime: Runtime, margin: float) -> list[Prediction]:
    """The top classes of the class matrix, as the runner scored them, each accepted or not by
    its class's threshold (the plain-word threshold for a class without one), the noise gate and
    the known concepts nearer to the image (`margin`; NaN: none compete)."""
    snapshot = encoded.snapshot
    indices, scores, similarities = encoded.indices, encoded.scores, encoded.similarities
    assert snapshot is not None and indices is not None
    assert scores is not None and similarities is not None
    noise = looks_like_noise(encoded.feature, runtime)
    verdicts = accepted(
        similarities, snapshot.thresholds_of(indices), runtime.word_threshold, noise=noise
    )
    names = [snapshot.names[int(i)] for i in indices]
    # Noise is no known concept either: nothing to name.
    competing = [not noise] * len(names)
    nearer = nearer_known(encoded.feature, names, similarities, competing, runtime, margin)
    return [
        Prediction(
            label=name,
            score=float(p),
            class_id=snapshot.ids[int(i)],
            similarity=float(similarity),
            accepted=ok and known is None,
            nearer_known=known,
        )
        for i, name, p, similarity, ok, known in zip(
            indices, names, scores, similarities, verdicts, nearer, strict=True
        )
    ]


async def _label_scorer(
    clean_labels: list[str],
    top_k: int,
    scope: str | None,
    runtime: Runtime,
    classifier: ClassMatrixCache,
    runner: ModelRunner,
    text_features: TextFeatureCache,
    margin: float,
) -> Callable[[Encoded], list[Prediction]]:
    """Ranks an image among `clean_labels` (`service.scoring.labels`); the label matrix is built
    once for all the request's images. A registered class among them competes with the known
    concepts (`margin`), a plain word does not: it is a known concept itself."""
    # Registered names resolve within the caller's tenant (an admin's: `default`, or ?tenant=).
    labels = await label_matrix(
        clean_labels,
        tenant=scope or DEFAULT_TENANT,
        runtime=runtime,
        classifier=classifier,
        runner=runner,
        text_features=text_features,
    )
    scale = float(runtime.backend.logit_scale)

    def score(encoded: Encoded) -> list[Prediction]:
        if labels.matrix.shape[1] != encoded.feature.shape[0]:
            raise error(503, "the class matrix does not match the loaded model; try again shortly")
        cosines = labels.matrix @ encoded.feature
        indices, scores = top_k_softmax(cosines, scale, top_k)
        similarities = cosines[indices].astype(np.float64)
        noise = looks_like_noise(encoded.feature, runtime)
        verdicts = accepted(
            similarities, labels.thresholds[indices], runtime.word_threshold, noise=noise
        )
        names = [labels.labels[int(i)] for i in indices]
        competing = [not noise and labels.class_ids[int(i)] is not None for i in indices]
        nearer = nearer_known(encoded.feature, names, similarities, competing, runtime, margin)
        return [
            Prediction(
                label=name,
                score=float(p),
                class_id=labels.class_ids[int(i)],
                similarity=float(similarity),
                accepted=ok and known is None,
                nearer_known=known,
            )
            for i, name, p, similarity, ok, known in zip(
                indices, names, scores, similarities, verdicts, nearer, strict=True
            )
        ]

    return score
