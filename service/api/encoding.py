"""Images of one request through the preprocessing pool and the micro-batcher, together."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from service.api.bodies import ImageInput, load_image
from service.api.uploads import PixelBudget, error, request_budget
from service.core.config import Settings
from service.runtime import Runtime
from service.scoring.batcher import Encoded, MatrixMismatch, ModelRunner

if TYPE_CHECKING:
    import torch


def _pixels(
    source: ImageInput, settings: Settings, runtime: Runtime, budget: PixelBudget
) -> torch.Tensor:
    """Read, check, decode (reduced to what the model needs) and preprocess one image, on the
    preprocessing pool; only the model's input tensor outlives the call."""
    backend = runtime.backend
    checked = load_image(source, settings, budget=budget, min_side=backend.decode_side)
    return backend.preprocess_images([checked.image])  # type: ignore[no-any-return]


async def encode_images(
    images: list[ImageInput],
    *,
    top_k: int | None,
    settings: Settings,
    runtime: Runtime,
    runner: ModelRunner,
    pool: Executor,
    tenant: str | None = None,
    before_scoring: Awaitable[object] | None = None,
) -> list[Encoded]:
    """Each image's feature (scored against the class matrix when `top_k` is set, against
    `tenant`'s classes only when that is set too), in order.

    Every image is decoded and checked before any is submitted, so a bad one fails the request
    before model work, and the runner finds them all waiting: a request of N images is one
    batch of N (two when the runner was mid-gather), not N batches.

    `before_scoring` (the class matrix catching up with the database) runs while the images
    decode, and is awaited before any is submitted: its error answers first, as if it had run
    before the decoding.
    """
    loop = asyncio.get_running_loop()
    budget = request_budget(settings)
    with runner.incoming():
        outcomes = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _pixels, image, settings, runtime, budget)
                for image in images
            ),
            return_exceptions=True,
        )
        if before_scoring is not None:
            await before_scoring
        for outcome in outcomes:  # the first bad image in order answers, whatever finished first
            if isinstance(outcome, BaseException):
                raise outcome
        futures = [runner.encode(pixels, top_k=top_k, tenant=tenant) for pixels in outcomes]  # type: ignore[arg-type]
    try:
        return [await asyncio.wrap_future(future) for future in futures]
    except MatrixMismatch:
        raise error(
            503, "the class matrix does not match the loaded model; try again shortly"
        ) from None
