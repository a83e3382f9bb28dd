"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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


class Client:
    """A LiteEmbed service over HTTP. Use as a context manager, or call `close()`.

    `key` is sent as `Authorization: Bearer <key>`. Errors raise the classes of
    `liteembed_client.errors`; 503s and refused connections are retried by `retry`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(transport=transport, **session_options(url, key, timeout))
        self._retry = retry or RetryPolicy()
        self._sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: Call[T]) -> T:
        retry = 0
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(**call.request_args())
            except httpx.TransportError as exc:
                outcome = exc
            else:
                if outcome.status_code != 503:
                    return call.result(outcome)
            self._sleep(self._retry.wait_before_retry(retry, outcome))
            retry += 1

    def register_class(
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
        """Upload a class's example images; training starts on a worker (status `queued`)."""
        return self._run(
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

    def get_class(self, class_id: str) -> ClassInfo:
        return self._run(calls.get_class(class_id))

    def list_classes(
        self,
        *,
        status: ClassStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        tenant: str | None = None,
    ) -> ClassPage:
        """One page of classes, oldest first (admin key)."""
        return self._run(
            calls.list_classes(status=status, limit=limit, offset=offset, tenant=tenant)
        )

    def iter_classes(
        self, *, status: ClassStatus | None = None, page_size: int = 200
    ) -> Iterator[ClassInfo]:
        """Every class, page by page (admin key)."""
        offset = 0
        while True:
            page = self.list_classes(status=status, limit=page_size, offset=offset)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def delete_class(self, class_id: str) -> None:
        """Delete a class (admin key); a running training job is abandoned."""
        self._run(calls.delete_class(class_id))

    def export_class(self, class_id: str, *, images: bool = True) -> dict[str, Any]:
        """The class as a portable bundle (a JSON-ready dict), for `import_class` elsewhere;
        `images=False` leaves its images out (then only the same model can import it)."""
        return self._run(calls.export_class(class_id, images=images))

    def import_class(self, bundle: Mapping[str, Any], *, replace: bool = False) -> ClassInfo:
        """Import an exported class: ready at once on the same model, else queued and learned
        again from the bundle's images."""
        return self._run(calls.import_class(bundle, replace=replace))

    def vocabulary(self, *, prefix: str = "", limit: int = 100) -> Vocabulary:
        """Words the model knows, which are what `hints` may name."""
        return self._run(calls.vocabulary(prefix=prefix, limit=limit))

    def get_embedding(self, class_id: str) -> Embedding:
        """A ready class's text feature and token embedding (Conflict while not ready)."""
        return self._run(calls.get_embedding(class_id))

    def classify(
        self,
        image: ImageSource,
        *,
        labels: Iterable[str] | None = None,
        top_k: int = 5,
        abstain: bool = False,
    ) -> Classification:
        """Score an image against every ready class, or against `labels` (registered class
        names and plain words)."""
        return self._run(calls.classify(image, labels=labels, top_k=top_k, abstain=abstain))

    def classify_many(
        self,
        images: Iterable[ImageSource],
        *,
        labels: Iterable[str] | None = None,
        top_k: int = 5,
        abstain: bool = False,
    ) -> list[Classification]:
        """Score several images in one request (one model batch on the service); one
        `Classification` per image, in order. At most the service's MAX_CLASSIFY_IMAGES."""
        return self._run(calls.classify_many(images, labels=labels, top_k=top_k, abstain=abstain))

    def embed(self, *, images: Iterable[ImageSource] = (), texts: Iterable[str] = ()) -> Embeddings:
        """L2-normalised features of images and texts, in one space. `{name}` in a text is the
        learned word of the registered class `name`: `"a sketch of a {zorb}"`."""
        return self._run(calls.embed(images, texts))

    def wait_ready(
        self,
        class_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_update: Callable[[ClassInfo], None] | None = None,
    ) -> ClassInfo:
        """Poll until the class is ready; raises TrainingFailed if it fails and WaitTimeout
        after `timeout` seconds. `on_update` sees every polled state (for progress bars)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.get_class(class_id)
            if on_update is not None:
                on_update(info)
            if done(info):
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(info, timeout or 0.0)
            self._sleep(poll_interval)
