"""The asyncio client: the same operations as `Client`, awaitable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import httpx

from liteembed_client import _calls as calls
from liteembed_client._base import DEFAULT_URL, done, session_options
from liteembed_client._calls import Call, ImageSource
from liteembed_client.errors import WaitTimeout
from liteembed_client.models import (
    Classification,
    ClassInfo,
    ClassPage,
    ClassStatus,
    Embedding,
    Embeddings,
    Vocabulary,
)
from liteembed_client.retry import RetryPolicy

T = TypeVar("T")


class AsyncClient:
    """A LiteEmbed service over HTTP, for asyncio. Use `async with`, or `await aclose()`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(transport=transport, **session_options(url, key, timeout))
        self._retry = retry or RetryPolicy()
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: Call[T]) -> T:
        retry = 0
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(**call.request_args())
            except httpx.TransportError as exc:
                outcome = exc
            else:
                if outcome.status_code != 503:
                    return call.result(outcome)
            await self._sleep(self._retry.wait_before_retry(retry, outcome))
            retry += 1

    async def register_class(
        self,
        name: str,
        images: Iterable[ImageSource],
        *,
        hints: Iterable[str] = (),
        confusers: Iterable[str] = (),
        replace: bool = False,
        negative_images: Iterable[ImageSource] = (),
        callback_url: str | None = None,
    ) -> ClassInfo:
        return await self._run(
            calls.register_class(
                name,
                images,
                hints=hints,
                confusers=confusers,
                replace=replace,
                negative_images=negative_images,
                callback_url=callback_url,
            )
        )

    async def get_class(self, class_id: str) -> ClassInfo:
        return await self._run(calls.get_class(class_id))

    async def list_classes(
        self,
        *,
        status: ClassStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        tenant: str | None = None,
    ) -> ClassPage:
        return await self._run(
            calls.list_classes(status=status, limit=limit, offset=offset, tenant=tenant)
        )

    async def iter_classes(
        self, *, status: ClassStatus | None = None, page_size: int = 200
    ) -> AsyncIterator[ClassInfo]:
        offset = 0
        while True:
            page = await self.list_classes(status=status, limit=page_size, offset=offset)
            for item in page.items:
                yield item
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    async def delete_class(self, class_id: str) -> None:
        await self._run(calls.delete_class(class_id))

    async def export_class(self, class_id: str, *, images: bool = True) -> dict[str, Any]:
        return await self._run(calls.export_class(class_id, images=images))

    async def import_class(self, bundle: Mapping[str, Any], *, replace: bool = False) -> ClassInfo:
        return await self._run(calls.import_class(bundle, replace=replace))

    async def vocabulary(self, *, prefix: str = "", limit: int = 100) -> Vocabulary:
        return await self._run(calls.vocabulary(prefix=prefix, limit=limit))

    async def get_embedding(self, class_id: str) -> Embedding:
        return await self._run(calls.get_embedding(class_id))

    async def classify(
        self,
        image: ImageSource,
        *,
        labels: Iterable[str] | None = None,
        top_k: int = 5,
        abstain: bool = False,
    ) -> Classification:
        return await self._run(calls.classify(image, labels=labels, top_k=top_k, abstain=abstain))

    async def classify_many(
        self,
        images: Iterable[ImageSource],
        *,
        labels: Iterable[str] | None = None,
        top_k: int = 5,
        abstain: bool = False,
    ) -> list[Classification]:
        return await self._run(
            calls.classify_many(images, labels=labels, top_k=top_k, abstain=abstain)
        )

    async def embed(
        self, *, images: Iterable[ImageSource] = (), texts: Iterable[str] = ()
    ) -> Embeddings:
        return await self._run(calls.embed(images, texts))

    async def wait_ready(
        self,
        class_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_update: Callable[[ClassInfo], None] | None = None,
    ) -> ClassInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await self.get_class(class_id)
            if on_update is not None:
                on_update(info)
            if done(info):
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(info, timeout or 0.0)
            await self._sleep(poll_interval)
