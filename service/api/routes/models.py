"""`GET /v1/models` in OpenAI's shape: the one model this deployment serves."""

from __future__ import annotations

import time

from fastapi import APIRouter

from service.api.deps import ClientDep, RuntimeDep
from service.api.errors import responses
from service.api.openai_embeddings import model_names
from service.api.schemas import ModelList, ModelOut
from service.api.uploads import error
from service.runtime import Runtime

router = APIRouter(prefix="/v1/models", tags=["embeddings"])

_STARTED = int(time.time())


def _model(runtime: Runtime) -> ModelOut:
    return ModelOut(id=runtime.model_id, created=_STARTED, dim=int(runtime.backend.embed_dim))


@router.get(
    "",
    response_model=ModelList,
    dependencies=[ClientDep],
    summary="The served model, as OpenAI clients list models",
    responses=responses(401, 403, 503),
)
async def list_models(runtime: RuntimeDep) -> ModelList:
    return ModelList(data=[_model(runtime)])


@router.get(
    "/{model_id:path}",
    response_model=ModelOut,
    dependencies=[ClientDep],
    summary="One model (its id, or its name without the checkpoint)",
    responses=responses(401, 403, 404, 503),
)
async def get_model(runtime: RuntimeDep, model_id: str) -> ModelOut:
    if model_id not in model_names(runtime):
        raise error(404, f"no model {model_id!r}; this service serves {runtime.model_id!r}")
    return _model(runtime)
