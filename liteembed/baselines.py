"""The few-shot methods the benchmark compares, behind one interface.

Each turns a class request into a class representation: a feature vector to score images
against, and whether it is a text feature (plug-and-play: it can replace CLIP's text feature for
the class anywhere) or an image-space prototype (usable only for nearest-prototype scoring).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from liteembed.backend import ClipBackend
from liteembed.config import OptimizationConfig
from liteembed.errors import NoImagesError
from liteembed.optimize import ClassRequest, _as_rgb, learn_classes, validate_name
from liteembed.vocab import WORD_TEMPLATE, Vocabulary


@dataclass
class ClassRepresentation:
    name: str
    feature: torch.Tensor  # (embed_dim,), normalised
    is_text_feature: bool  # True: plug-and-play text feature; False: image-space prototype
    token_embedding: torch.Tensor | None = None
    templates: list[str] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)


class FewShotMethod(Protocol):
    name: str

    def fit(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        request: ClassRequest,
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> ClassRepresentation: ...


@dataclass
class ZeroShotName:
    """CLIP's own text feature of the class name in the template(s); the images are not used."""

    templates: tuple[str, ...] = (WORD_TEMPLATE,)
    name: str = "zero-shot"

    def fit(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        request: ClassRequest,
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> ClassRepresentation:
        class_name = validate_name(request.name)
        features = backend.encode_texts([t.format(class_name) for t in self.templates])
        feature = F.normalize(features.mean(dim=0), dim=-1)
        return ClassRepresentation(class_name, feature, True, templates=list(self.templates))


@dataclass
class ImagePrototype:
    """The normalised mean of the exemplars' image features."""

    name: str = "image-prototype"

    def fit(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        request: ClassRequest,
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> ClassRepresentation:
        class_name = validate_name(request.name)
        if not request.images:
            raise NoImagesError(f"class {class_name!r} has no images")
        features = backend.encode_images([_as_rgb(image) for image in request.images])
        return ClassRepresentation(class_name, F.normalize(features.mean(dim=0), dim=-1), False)


@dataclass
class LiteEmbed:
    """The full reconstruction with the given switches."""

    config: OptimizationConfig = field(default_factory=OptimizationConfig)
    seed: int = 0
    name: str = "liteembed"

    def fit(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        request: ClassRequest,
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> ClassRepresentation:
        learned = learn_classes(
            backend,
            vocabulary,
            [request],
            registered=registered,
            config=self.config,
            seed=self.seed,
        )[0]
        return ClassRepresentation(
            learned.name,
            learned.text_feature,
            True,
            token_embedding=learned.token_embedding,
            templates=learned.templates,
            diagnostics=learned.diagnostics,
        )


def TextualInversion(  # noqa: N802 - reads as a method name beside the classes above
    config: OptimizationConfig | None = None, seed: int = 0
) -> LiteEmbed:
    """Image alignment only: the same optimisation with the coarse and fine terms switched off."""
    base = config or OptimizationConfig()
    return LiteEmbed(
        config=base.with_(lambda_c=0.0, lambda_f=0.0), seed=seed, name="textual-inversion"
    )
