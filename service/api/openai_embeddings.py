"""OpenAI's embeddings shape on `POST /v1/embeddings`: the request's checks and the answer.

Vector databases and LLM frameworks call embedding servers through OpenAI's client; answering
its shape (as Infinity and text-embeddings-inference do) lets them use the learned words too.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from service.api.schemas import OpenAIEmbeddingsJson
from service.api.uploads import error
from service.runtime import Runtime
from service.scoring.prompts import Prompt

# Per text: the start and end tokens around the prompt.
_FRAME_TOKENS = 2


def model_names(runtime: Runtime) -> set[str]:
    """What a request's `model` may say: the model's id, or its name without the checkpoint."""
    return {runtime.model_id, runtime.model_id.split("@")[0]}


def check_openai_request(request: OpenAIEmbeddingsJson, runtime: Runtime) -> None:
    """422 for a model other than the served one, or a width other than its own."""
    if request.model is not None and request.model not in model_names(runtime):
        raise error(
            422,
            f"model {request.model!r} is not served here; this service serves "
            f"{runtime.model_id!r} (GET /v1/models)",
        )
    dim = int(runtime.backend.embed_dim)
    if request.dimensions is not None and request.dimensions != dim:
        raise error(422, f"dimensions must be the model's own, {dim}; got {request.dimensions}")


def openai_answer(
    request: OpenAIEmbeddingsJson,
    order: tuple[tuple[str, int], ...],
    *,
    runtime: Runtime,
    images: list[np.ndarray],
    texts: np.ndarray,
    prompts: list[Prompt],
) -> dict[str, Any]:
    """One embedding per `input` item, in the order sent: `OpenAIEmbeddingsOut` as plain JSON
    values. Built as a dict rather than the model and its dump: on a fast model's request the
    model's construction and dump cost as much as the route's own Python."""
    data = []
    for index, (kind, position) in enumerate(order):
        vector = images[position] if kind == "image" else texts[position]
        embedding = _encoded(vector, request.encoding_format)
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(_prompt_tokens(runtime, prompt) for prompt in prompts)
    return {
        "object": "list",
        "data": data,
        "model": request.model or runtime.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    values = np.ascontiguousarray(vector, dtype="<f4").reshape(-1)
    if encoding_format == "base64":
        # OpenAI's base64 form: the float32 array's little-endian bytes.
        return base64.b64encode(values.tobytes()).decode("ascii")
    return values.tolist()  # type: ignore[no-any-return]


def _prompt_tokens(runtime: Runtime, prompt: Prompt) -> int:
    """Tokens the text encoder reads for `prompt`: a learned word is one."""
    count = _FRAME_TOKENS
    for piece in prompt:
        count += len(runtime.backend.encode_word_tokens(piece)) if isinstance(piece, str) else 1
    return count
