"""Image and text features, L2-normalised, in the space the classes are scored in.

A text may use the learned word of a registered class: `{name}` in the text stands for that
class's token embedding, in any prompt (`"a sketch of a {zorb}"`, `"{zorb} next to a {plax}"`),
which is what lets a learned word be used outside the templates it was trained with. `{{` and
`}}` are literal braces; any other text is CLIP's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from liteembed.errors import InvalidNameError
from liteembed.text_path import PromptTooLongError
from service.api.bodies import EmbeddingsBodyDep
from service.api.deps import ClientDep, EmbeddingsModelDep, SettingsDep, TenantScopeDep
from service.api.encoding import encode_images
from service.api.errors import responses
from service.api.openai_embeddings import check_openai_request, openai_answer
from service.api.openapi import request_body
from service.api.schemas import EmbeddingsJson, EmbeddingsOut
from service.api.uploads import error
from service.db import close_quietly, is_unavailable
from service.metrics import STALE_HEADER
from service.models import DEFAULT_TENANT, PersonalizedClass, Status
from service.runtime import Runtime
from service.scoring.learned_words import LearnedWords
from service.scoring.prompts import ClassWord, parse_prompt

router = APIRouter(tags=["embeddings"])


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsOut,
    dependencies=[ClientDep],
    summary="Image and text features; `{name}` in a text is a registered class's learned word",
    description="Also accepts OpenAI's embeddings request (`input`, `model`, `encoding_format`, "
    "`dimensions`: the `OpenAIEmbeddingsJson` schema) and then answers in OpenAI's shape "
    "(`OpenAIEmbeddingsOut`), so OpenAI clients and the tools built on them work unchanged.",
    responses=responses(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra=request_body(EmbeddingsJson, "application/json"),
)
async def embeddings(
    response: Response,
    settings: SettingsDep,
    model: EmbeddingsModelDep,
    scope: TenantScopeDep,
    body: EmbeddingsBodyDep,
) -> EmbeddingsOut | JSONResponse:
    runtime, classifier = model.image.runtime, model.image.classifier
    runner, learned_words = model.image.runner, model.learned_words
    if body.openai is not None:
        check_openai_request(body.openai, runtime)
    try:
        prompts = [parse_prompt(text, field=f"texts[{i}]") for i, text in enumerate(body.texts)]
    except InvalidNameError as exc:
        raise error(422, str(exc)) from None
    words = {piece.key: piece for p in prompts for piece in p if isinstance(piece, ClassWord)}
    # Names resolve within the caller's tenant (an admin's: `default`, or ?tenant=).
    tenant = scope or DEFAULT_TENANT
    learned: dict[str, torch.Tensor] = {}
    if words:  # only a learned word needs the database (and a thread to read it on)
        try:
            learned = await run_in_threadpool(
                _learned_words, model.sessions, runtime.model_id, tenant, words, learned_words
            )
        except Exception as exc:
            # The database cannot be read: words this process read before and still holds in
            # its class matrix are answered, marked stale (as /classify's); any other is a 503.
            if not (settings.classify_during_database_outage and is_unavailable(exc)):
                raise
            recalled = learned_words.recall(classifier.current, tenant, list(words))
            if recalled is None:
                raise
            learned = recalled
            response.headers[STALE_HEADER] = "true"
    # Images through the micro-batcher, like /classify's (unscored); texts on the same thread.
    encoded = await encode_images(
        body.images,
        top_k=None,
        settings=settings,
        runtime=runtime,
        runner=runner,
        pool=model.image.pool,
    )
    texts = np.zeros((0, int(runtime.backend.embed_dim)), dtype=np.float32)
    if prompts:
        pieces = [
            [p if isinstance(p, str) else learned[p.key] for p in prompt] for prompt in prompts
        ]
        try:
            texts = await asyncio.wrap_future(runner.call(lambda: _encode(runtime, pieces)))
        except PromptTooLongError as exc:
            raise error(422, f"texts[{exc.index}] is {exc}") from None
    if body.openai is not None:
        answer = openai_answer(
            body.openai,
            body.order,
            runtime=runtime,
            images=[one.feature for one in encoded],
            texts=texts,
            prompts=prompts,
        )
    else:
        # EmbeddingsOut's fields as plain JSON values: the response model's validation and
        # dump of every float would cost more than the rest of the route's Python.
        answer = {
            "model": runtime.model_id,
            "dim": int(runtime.backend.embed_dim),
            "images": [one.feature.tolist() for one in encoded],
            "texts": texts.tolist(),
        }
    return JSONResponse(answer, headers=response.headers)


def _learned_words(
    sessions: Callable[[], Session],
    model_id: str,
    tenant: str,
    words: dict[str, ClassWord],
    remembered: LearnedWords,
) -> dict[str, torch.Tensor]:
    """The token embedding of each named class of `model_id` in `tenant` (each remembered for
    an outage): 422 if there is no such class, 409 while it is not ready."""
    session = sessions()
    try:
        rows = _rows(session, model_id, tenant, words)
    finally:
        close_quietly(session)
    found = {row.name_key: row for row in rows}
    learned = {}
    for key, word in words.items():
        row = found.get(key)
        if row is None:
            raise error(422, f"no class named {word.name!r} is registered for the model {model_id}")
        if row.status != Status.ready or row.token_embedding is None:
            raise error(409, f"class {word.name!r} is {row.status}, not ready")
        learned[key] = torch.from_numpy(np.frombuffer(row.token_embedding, np.float32).copy())
        remembered.remember(model_id, tenant, key, row.id, learned[key])
    return learned


def _rows(session: Session, model_id: str, tenant: str, words: dict[str, ClassWord]) -> list[Any]:
    return session.execute(
        select(
            PersonalizedClass.id,
            PersonalizedClass.name_key,
            PersonalizedClass.status,
            PersonalizedClass.token_embedding,
        ).where(
            PersonalizedClass.model_id == model_id,
            PersonalizedClass.tenant == tenant,
            PersonalizedClass.name_key.in_(list(words)),
        )
    ).all()  # type: ignore[return-value]


def _encode(runtime: Runtime, prompts: list[list[str | torch.Tensor]]) -> np.ndarray:
    features = runtime.backend.encode_prompts(prompts).float().cpu().numpy()
    return features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)
