"""LiteEmbed engine: learn a new CLIP word from a few images, on any open_clip model.

Callers use only what this module re-exports (docs/engine-api.md). The re-exports load on first
use (PEP 562), so `liteembed_client` and other light submodules import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "ClipBackend": "liteembed.backend",
    "load_backend": "liteembed.backend",
    "register_model_configs": "liteembed.backend",
    "ClassRepresentation": "liteembed.baselines",
    "FewShotMethod": "liteembed.baselines",
    "ImagePrototype": "liteembed.baselines",
    "LiteEmbed": "liteembed.baselines",
    "TextualInversion": "liteembed.baselines",
    "ZeroShotName": "liteembed.baselines",
    "OptimizationConfig": "liteembed.config",
    "CheckpointError": "liteembed.errors",
    "ImageTooLargeError": "liteembed.errors",
    "InvalidImageError": "liteembed.errors",
    "InvalidNameError": "liteembed.errors",
    "LiteEmbedError": "liteembed.errors",
    "ModelNotFoundError": "liteembed.errors",
    "NoImagesError": "liteembed.errors",
    "OptimizationCancelled": "liteembed.errors",
    "UnknownHintError": "liteembed.errors",
    "UnsupportedImageTypeError": "liteembed.errors",
    "decode_image": "liteembed.images",
    "to_rgb": "liteembed.images",
    "ReferenceBank": "liteembed.bank",
    "build_bank": "liteembed.bank",
    "find_bank": "liteembed.bank",
    "load_bank": "liteembed.bank",
    "plain_word_threshold": "liteembed.bank",
    "ClassRequest": "liteembed.requests",
    "ProtectedClass": "liteembed.requests",
    "LearnedClass": "liteembed.requests",
    "ProgressEvent": "liteembed.requests",
    "learn_class": "liteembed.optimize",
    "learn_classes": "liteembed.optimize",
    "name_key": "liteembed.names",
    "validate_name": "liteembed.names",
    "RegisteredMethod": "liteembed.registry",
    "create_method": "liteembed.registry",
    "list_methods": "liteembed.registry",
    "method_entry": "liteembed.registry",
    "register_method": "liteembed.registry",
    "Vocabulary": "liteembed.vocab",
    "load_vocabulary": "liteembed.vocab",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'liteembed' has no attribute {name!r}")
    if module == "liteembed.registry":
        # The engine's own methods register when their module is imported; it needs torch, so it
        # is imported here, when the registry is first asked for, not by `import liteembed`.
        importlib.import_module("liteembed.baselines")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
