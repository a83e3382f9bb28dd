"""Images of one request through the preprocessing pool and the micro-batcher, together."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

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
    before_scoring: Callable[[], object] | None = None,
) -> list[Encoded]:
    """Each image's feature (scored against the class matrix when `top_k` is set, against
    `tenant`'s classes only when that is set too), in order.

    Every image is decoded and checked before any is submitted, so a bad one fails the request
    before model work, and the runner finds them all waiting: a request of N images is one
    batch of N (two when the runner was mid-gather), not N batches.

    `before_scoring` (blocking: the class matrix catching up with the database) runs on the
    preprocessing pool before any image is submitted; its error answers first, as if it had run
    before the decoding.
    """
    budget = request_budget(settings)
    decode = functools.partial(_pixels, settings=settings, runtime=runtime, budget=budget)
    jobs = (decode, top_k, tenant, runner, pool, before_scoring)
    if len(images) == 1:
        return [await _encode_one(images[0], *jobs)]
    return await _encode_many(images, *jobs)


async def _encode_one(
    image: ImageInput,
    decode: Callable[[ImageInput], torch.Tensor],
    top_k: int | None,
    tenant: str | None,
    runner: ModelRunner,
    pool: Executor,
    before_scoring: Callable[[], object] | None,
) -> Encoded:
    """One image: the pool thread runs `before_scoring`, decodes and submits to the model
    thread itself, and the model thread's answer wakes the event loop, once. Each hand-off
    between threads costs a wake-up and a wait for the GIL; a fast model's request is a chain
    of them (pool -> loop -> model thread -> loop before), so the loop now sees only the end."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Encoded] = loop.create_future()
    submitted: list[Future[Encoded]] = []

    def deliver(outcome: Future[Encoded] | BaseException) -> None:
        if answer.done():  # the request was cancelled meanwhile
            return
        if isinstance(outcome, BaseException):
            answer.set_exception(outcome)
        elif outcome.cancelled():
            answer.cancel()
        elif (exc := outcome.exception()) is not None:
            answer.set_exception(exc)
        else:
            answer.set_result(outcome.result())

    def on_pool() -> None:
        try:
            with runner.arriving():
                if before_scoring is not None:
                    before_scoring()
                future = runner.encode(decode(image), top_k=top_k, tenant=tenant)
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, exc)
            return
        submitted.append(future)
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(deliver, done))

    # Announced from here, so that the runner, gathering a batch, waits for this image while
    # it is still queued for the pool.
    runner.expect()
    try:
        pool.submit(on_pool)
    except BaseException:
        runner.arrived()
        raise
    try:
        return await _mapped(answer)
    except asyncio.CancelledError:
        for future in submitted:  # a caller that went away no longer needs its row
            future.cancel()
        raise


async def _encode_many(
    images: list[ImageInput],
    decode: Callable[[ImageInput], torch.Tensor],
    top_k: int | None,
    tenant: str | None,
    runner: ModelRunner,
    pool: Executor,
    before_scoring: Callable[[], object] | None,
) -> list[Encoded]:
    """Several images: decoded side by side on the pool (with `before_scoring` as one more
    job), submitted together once all are."""
    loop = asyncio.get_running_loop()
    with runner.incoming():
        current = loop.run_in_executor(pool, before_scoring) if before_scoring is not None else None
        outcomes = await asyncio.gather(
            *(loop.run_in_executor(pool, decode, image) for image in images),
            return_exceptions=True,
        )
        if current is not None:
            await current
        for outcome in outcomes:  # the first bad image in order answers, whatever finished first
            if isinstance(outcome, BaseException):
                raise outcome
        futures = [runner.encode(pixels, top_k=top_k, tenant=tenant) for pixels in outcomes]  # type: ignore[arg-type]
    return [await _mapped(asyncio.wrap_future(future)) for future in futures]


async def _mapped(pending: asyncio.Future[Any]) -> Any:
    try:
        return await pending
    except MatrixMismatch:
        raise error(
            503, "the class matrix does not match the loaded model; try again shortly"
        ) from None
