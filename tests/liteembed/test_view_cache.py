"""A class learned again encodes none of its views again, and the cache stays bounded."""

from __future__ import annotations

import pytest
import torch

from liteembed import ClipBackend, OptimizationConfig, Vocabulary, learn_class
from liteembed.threshold import noise_features
from liteembed.view_cache import ViewFeatureCache
from tests.helpers.engine_images import solid_images


def test_a_class_learned_again_encodes_none_of_its_views_again(
    backend: ClipBackend, vocabulary: Vocabulary, monkeypatch: pytest.MonkeyPatch
) -> None:
    noise_features(backend)  # encoded once per model, whoever asks first
    encoded: list[int] = []
    real = backend.encode_image_batch

    def counting(pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        encoded.append(len(pixels))
        return real(pixels, dtype)

    monkeypatch.setattr(backend, "encode_image_batch", counting)
    images = solid_images((17, 201, 190))  # a colour no other test learns
    config = OptimizationConfig(steps=3, step_rule="fixed", lambda_img=0.0)
    first = learn_class(backend, vocabulary, "tealthing", images, config=config)
    views = sum(encoded)
    assert views == len(images) * (1 + config.augment_views)
    again = learn_class(backend, vocabulary, "tealthing", images, config=config)
    assert sum(encoded) == views
    assert torch.allclose(first.token_embedding, again.token_embedding, atol=1e-6)
    # A new image is encoded, the known ones are not.
    learn_class(
        backend, vocabulary, "tealthing", [*images, *solid_images((90, 10, 160), count=1)],
        config=config,
    )  # fmt: skip
    assert sum(encoded) == views + 1 + config.augment_views


class _Encoder:
    def __init__(self) -> None:
        self.rows = 0

    def encode_image_batch(
        self, pixels: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        self.rows += len(pixels)
        return pixels.flatten(1)[:, :4].to(dtype or pixels.dtype).float()


def test_the_least_recently_used_views_leave_first() -> None:
    cache = ViewFeatureCache(max_views=2)
    encoder = _Encoder()
    a, b, c = (torch.full((1, 3, 2, 2), float(v)) for v in (1, 2, 3))
    assert torch.equal(
        cache.encode(encoder, torch.cat([a, b])), torch.tensor([[1.0] * 4, [2.0] * 4])
    )
    cache.encode(encoder, a)  # a is now the most recent
    cache.encode(encoder, c)  # b leaves
    assert len(cache) == 2 and encoder.rows == 3
    cache.encode(encoder, torch.cat([a, c]))
    assert encoder.rows == 3
    cache.encode(encoder, b)
    assert encoder.rows == 4


def test_a_view_at_another_precision_is_encoded_again() -> None:
    cache = ViewFeatureCache()
    encoder = _Encoder()
    views = torch.rand(3, 3, 2, 2)
    cache.encode(encoder, views)
    cache.encode(encoder, views, torch.bfloat16)
    assert encoder.rows == 6 and len(cache) == 6
    # Each precision's entries answer for it alone.
    assert torch.equal(cache.encode(encoder, views), views.flatten(1)[:, :4])
    assert torch.equal(
        cache.encode(encoder, views, torch.bfloat16),
        views.flatten(1)[:, :4].to(torch.bfloat16).float(),
    )
    assert encoder.rows == 6
