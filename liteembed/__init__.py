"""LiteEmbed engine: learn a new CLIP word from a few images, on any open_clip model.

Callers use only what this module re-exports (docs/engine-api.md).
"""

from liteembed.backend import ClipBackend, load_backend, register_model_configs
from liteembed.baselines import (
    ClassRepresentation,
    FewShotMethod,
    ImagePrototype,
    LiteEmbed,
    TextualInversion,
    ZeroShotName,
)
from liteembed.config import OptimizationConfig
from liteembed.errors import (
    CheckpointError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidNameError,
    LiteEmbedError,
    ModelNotFoundError,
    NoImagesError,
    OptimizationCancelled,
    UnknownHintError,
    UnsupportedImageTypeError,
)
from liteembed.images import decode_image, to_rgb
from liteembed.optimize import (
    ClassRequest,
    LearnedClass,
    ProgressEvent,
    learn_class,
    learn_classes,
    validate_name,
)
from liteembed.vocab import Vocabulary, load_vocabulary

__all__ = [
    "CheckpointError",
    "ClassRepresentation",
    "ClassRequest",
    "ClipBackend",
    "FewShotMethod",
    "ImagePrototype",
    "ImageTooLargeError",
    "InvalidImageError",
    "InvalidNameError",
    "LearnedClass",
    "LiteEmbed",
    "LiteEmbedError",
    "ModelNotFoundError",
    "NoImagesError",
    "OptimizationCancelled",
    "OptimizationConfig",
    "ProgressEvent",
    "TextualInversion",
    "UnknownHintError",
    "UnsupportedImageTypeError",
    "Vocabulary",
    "ZeroShotName",
    "decode_image",
    "learn_class",
    "learn_classes",
    "load_backend",
    "load_vocabulary",
    "register_model_configs",
    "to_rgb",
    "validate_name",
]
