"""The methods the benchmark compares share one interface."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from liteembed import (
    ClassRequest,
    ClipBackend,
    ImagePrototype,
    LiteEmbed,
    OptimizationConfig,
    TextualInversion,
    Vocabulary,
    ZeroShotName,
    learn_class,
)
from tests.helpers.engine_images import RED, solid_images


def test_every_method_returns_a_normalised_feature(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    request = ClassRequest("redthing", solid_images(RED))
    config = OptimizationConfig(steps=10)
    methods = [ZeroShotName(), ImagePrototype(), TextualInversion(config), LiteEmbed(config)]
    results = {m.name: m.fit(backend, vocabulary, request) for m in methods}
    assert set(results) == {"zero-shot", "image-prototype", "textual-inversion", "liteembed"}
    for result in results.values():
        assert result.feature.shape == (backend.embed_dim,)
        assert abs(result.feature.norm().item() - 1) < 1e-5
    assert not results["image-prototype"].is_text_feature
    assert all(results[n].is_text_feature for n in ("zero-shot", "textual-inversion", "liteembed"))

    expected_zero_shot = backend.encode_texts(["a photo of a redthing."])[0]
    assert torch.allclose(results["zero-shot"].feature, expected_zero_shot, atol=1e-6)
    images = backend.encode_images(request.images)
    assert torch.allclose(
        results["image-prototype"].feature, F.normalize(images.mean(dim=0), dim=-1), atol=1e-6
    )
    direct = learn_class(backend, vocabulary, "redthing", request.images, config=config)
    assert torch.allclose(results["liteembed"].feature, direct.text_feature, atol=1e-6)
    inversion = results["textual-inversion"]
    assert inversion.diagnostics["config"]["lambda_c"] == 0.0
    assert inversion.diagnostics["config"]["lambda_f"] == 0.0
    assert inversion.token_embedding is not None
