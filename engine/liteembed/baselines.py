"""The engine's few-shot methods, behind one interface and registered by name.

Each turns class requests into class representations: a feature vector to score images
against, and whether it is a text feature (plug-and-play: it can replace CLIP's text feature for
the class anywhere) or an image-space prototype (usable only for nearest-prototype scoring).
`fit_classes` handles many classes in one call (LiteEmbed optimises them as one batch); `fit`
is the one-class shorthand. The registry (`liteembed.registry`) lists them; a new method is a
class with these two methods and a `@register_method` factory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from liteembed.augment import as_rgb
from liteembed.backend import ClipBackend
from liteembed.bank import ReferenceBank, find_bank
from liteembed.config import OptimizationConfig
from liteembed.errors import NoImagesError
from liteembed.names import validate_name
from liteembed.optimize import learn_classes
from liteembed.registry import register_method
from liteembed.requests import ClassRequest, ProtectedClass
from liteembed.vocab import WORD_TEMPLATE, Vocabulary


@dataclass
class ClassRepresentation:
    name: str
    feature: torch.Tensor  # (embed_dim,), normalised
    is_text_feature: bool  # True: plug-and-play text feature; False: image-space prototype
    token_embedding: torch.Tensor | None = None
    templates: list[str] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    # Raw-cosine acceptance threshold (liteembed.threshold), for methods that compute one.
    threshold: float | None = None


class FewShotMethod(Protocol):
    name: str

    def fit(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        request: ClassRequest,
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> ClassRepresentation: ...

    def fit_classes(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        requests: Sequence[ClassRequest],
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> list[ClassRepresentation]: ...


class _FitOneThroughMany:
    """`fit` (one class) as `fit_classes` of a list of one: each method writes only the batched
    form."""

    def fit(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        request: ClassRequest,
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> ClassRepresentation:
        return self.fit_classes(backend, vocabulary, [request], registered)[0]

    def fit_classes(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        requests: Sequence[ClassRequest],
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> list[ClassRepresentation]:
        raise NotImplementedError


@dataclass
class ZeroShotName(_FitOneThroughMany):
    """CLIP's own text feature of the class name in the template(s); the images are not used."""

    templates: tuple[str, ...] = (WORD_TEMPLATE,)
    name: str = "zero-shot"

    def fit_classes(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        requests: Sequence[ClassRequest],
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> list[ClassRepresentation]:
        names = [validate_name(request.name) for request in requests]
        if not names:
            return []
        prompts = [t.format(n) for n in names for t in self.templates]
        features = backend.encode_texts(prompts).float().cpu()
        features = features.reshape(len(names), len(self.templates), -1)
        return [
            ClassRepresentation(
                n, F.normalize(f.mean(dim=0), dim=-1), True, templates=list(self.templates)
            )
            for n, f in zip(names, features, strict=True)
        ]


@dataclass
class ImagePrototype(_FitOneThroughMany):
    """The normalised mean of the exemplars' image features."""

    name: str = "image-prototype"

    def fit_classes(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        requests: Sequence[ClassRequest],
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> list[ClassRepresentation]:
        out = []
        for request in requests:
            class_name = validate_name(request.name)
            if not request.images:
                raise NoImagesError(f"class {class_name!r} has no images")
            features = backend.encode_images([as_rgb(image) for image in request.images])
            feature = F.normalize(features.float().cpu().mean(dim=0), dim=-1)
            out.append(ClassRepresentation(class_name, feature, False))
        return out


@dataclass
class LiteEmbed(_FitOneThroughMany):
    """The full reconstruction with the given switches; `fit_classes` learns one batch."""

    config: OptimizationConfig = field(default_factory=OptimizationConfig)
    seed: int = 0
    name: str = "liteembed"
    # Reference bank (liteembed.bank): a bank, "shipped" for the model's own (if it has one),
    # or None; and classes already in use to protect (liteembed.evidence).
    bank: ReferenceBank | str | None = None
    protected: Sequence[ProtectedClass] = ()

    def fit_classes(
        self,
        backend: ClipBackend,
        vocabulary: Vocabulary,
        requests: Sequence[ClassRequest],
        registered: Mapping[str, torch.Tensor] | None = None,
    ) -> list[ClassRepresentation]:
        bank = find_bank(backend) if self.bank == "shipped" else self.bank
        learned = learn_classes(
            backend,
            vocabulary,
            requests,
            registered=registered,
            protected=self.protected,
            bank=bank if isinstance(bank, ReferenceBank) else None,
            config=self.config,
            seed=self.seed,
        )
        return [
            ClassRepresentation(
                c.name,
                c.text_feature,
                True,
                token_embedding=c.token_embedding,
                templates=c.templates,
                diagnostics=c.diagnostics,
                threshold=c.threshold,
            )
            for c in learned
        ]


def TextualInversion(  # noqa: N802 - reads as a method name beside the classes above
    config: OptimizationConfig | None = None,
    seed: int = 0,
    bank: ReferenceBank | str | None = None,
) -> LiteEmbed:
    """Image alignment only: the same optimisation with the coarse and fine terms switched off
    (the image-evidence term stays as the config sets it)."""
    base = config or OptimizationConfig()
    return LiteEmbed(
        config=base.with_(lambda_c=0.0, lambda_f=0.0),
        seed=seed,
        name="textual-inversion",
        bank=bank,
    )


register_method("zero-shot", plug_and_play=True, description="class name in the template")(
    ZeroShotName
)
register_method("image-prototype", plug_and_play=False, description="mean shot feature")(
    ImagePrototype
)
register_method(
    "textual-inversion", plug_and_play=True, description="alignment only (no coarse, no fine)"
)(TextualInversion)
register_method("liteembed", plug_and_play=True, description="the full reconstruction")(LiteEmbed)
