"""Thumbnails made once per class and process, so a thumbnail costs the same whatever was uploaded.

A class's first image may be a 36-megapixel PNG that fits in 100 KB: decoding it takes about
half a second of CPU. The registering process keeps the copy it decoded to check the upload;
any other process decodes it once, reduced on the way (never held at full size). Each keeps that
reduced master (longest side at most `MASTER_SIDE`) and the JPEG answered for
each size, least recently used first out, within `max_bytes`. Concurrent requests for a class
not yet decoded wait for the one decode instead of starting their own. A class's images never
change (a replacement is a new id), so nothing cached goes stale.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from PIL import Image

# The largest thumbnail the route serves; the master is reduced to this.
MASTER_SIDE = 512


class ThumbnailCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Image.Image | bytes, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._decoding: dict[str, threading.Lock] = {}
        self.decodes = 0  # masters made since start (tests: one per class)

    def jpeg(
        self,
        class_id: str,
        size: int,
        image_bytes: Callable[[], bytes],
        decode: Callable[[bytes, int], Image.Image],
    ) -> bytes:
        """The JPEG of `class_id`'s first image, longest side at most `size`. On a miss,
        `image_bytes()` reads the upload and `decode(data, min_side)` decodes it reduced."""
        answer = self._get(("jpeg", class_id, size))
        if isinstance(answer, bytes):
            return answer
        master = self._master(class_id, image_bytes, decode)
        small = master.copy()
        small.thumbnail((size, size))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=85)
        answer = buffer.getvalue()
        self._put(("jpeg", class_id, size), answer, len(answer))
        return answer

    def keep(self, class_id: str, image: Image.Image) -> None:
        """Keep `image` (a class's first image, decoded at registration) as its master."""
        master = image.copy()
        master.thumbnail((MASTER_SIDE, MASTER_SIDE))
        width, height = master.size
        self._put(("master", class_id), master, width * height * 3)

    def _master(
        self,
        class_id: str,
        image_bytes: Callable[[], bytes],
        decode: Callable[[bytes, int], Image.Image],
    ) -> Image.Image:
        with self._lock:
            turn = self._decoding.setdefault(class_id, threading.Lock())
        with turn:  # one decode per class; the others find its result
            try:
                found = self._get(("master", class_id))
                if isinstance(found, Image.Image):
                    return found
                master = decode(image_bytes(), MASTER_SIDE)
                master.thumbnail((MASTER_SIDE, MASTER_SIDE))
                self.decodes += 1
                width, height = master.size
                self._put(("master", class_id), master, width * height * 3)
                return master
            finally:
                with self._lock:
                    if self._decoding.get(class_id) is turn:
                        del self._decoding[class_id]

    def _get(self, key: Hashable) -> Image.Image | bytes | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            return entry[0]

    def _put(self, key: Hashable, value: Image.Image | bytes, cost: int) -> None:
        if cost > self.max_bytes:
            return  # larger than the whole cache: answered, not kept
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, cost)
            self._bytes += cost
            while self._bytes > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self._bytes -= freed

    @property
    def bytes_held(self) -> int:
        return self._bytes
