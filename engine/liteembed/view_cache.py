"""Image features of views already encoded, per loaded model.

A class's views are the same whenever it is learned (its images, and crops drawn from a generator
seeded alike), and the service learns a class more than once: a new class that takes a ready
class's images is learned again together with it, at once. Each view's pixels are hashed after
preprocessing and its feature kept, so the second time only what is new is encoded. The pixels
are the key, so a hit is the same image exactly; the cache holds features only, a bounded number.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

import torch

from liteembed.backend import ClipBackend

# Views kept per model: 4,096 x 512 float32 features are 8 MB (ViT-B/32), enough for the
# classes of a few batches of the largest request (16 images x 3 views each).
MAX_VIEWS = 4096


class ViewFeatureCache:
    """Features of preprocessed views by their pixels' digest, least recently used first out."""

    def __init__(self, max_views: int = MAX_VIEWS) -> None:
        self.max_views = max_views
        self._features: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def encode(
        self, backend: ClipBackend, pixels: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """`backend.encode_image_batch(pixels, dtype)`, encoding only the views not seen before
        at that precision."""
        # A view encoded at another precision is another feature.
        precision = b"" if dtype is None else str(dtype).encode()
        keys = [precision + _digest(view) for view in pixels]
        with self._lock:
            found = {k: self._features[k] for k in keys if k in self._features}
            for key in found:
                self._features.move_to_end(key)
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            encoded = backend.encode_image_batch(pixels[missing], dtype)
            fresh = dict(zip((keys[i] for i in missing), encoded, strict=True))
            with self._lock:
                for key, feature in fresh.items():
                    self._features[key] = feature
                    self._features.move_to_end(key)
                while len(self._features) > self.max_views:
                    self._features.popitem(last=False)
            found.update(fresh)
        return torch.stack([found[key] for key in keys])

    def __len__(self) -> int:
        return len(self._features)


_CACHES: weakref.WeakKeyDictionary[ClipBackend, ViewFeatureCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def view_cache(backend: ClipBackend) -> ViewFeatureCache:
    """The model's cache (one per loaded backend)."""
    with _CACHES_LOCK:
        cache = _CACHES.get(backend)
        if cache is None:
            cache = _CACHES[backend] = ViewFeatureCache()
        return cache


def _digest(view: torch.Tensor) -> bytes:
    data = view.detach().cpu().contiguous()
    shape = repr((tuple(data.shape), str(data.dtype))).encode()
    return hashlib.blake2b(shape + data.numpy().tobytes(), digest_size=16).digest()


__all__ = ["MAX_VIEWS", "ViewFeatureCache", "view_cache"]
