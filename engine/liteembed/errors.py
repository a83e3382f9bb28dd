"""Exceptions of the engine. Callers map them to their own responses (the service: HTTP codes)."""

from __future__ import annotations


class LiteEmbedError(Exception):
    """Base class of every error the engine raises on purpose."""


class NoImagesError(LiteEmbedError):
    """A class was requested with an empty image list."""


class InvalidImageError(LiteEmbedError):
    """Bytes that cannot be decoded as an image."""


class UnsupportedImageTypeError(LiteEmbedError):
    """A decodable file of a format or pixel type the engine refuses."""


class ImageTooLargeError(LiteEmbedError):
    """More pixels than allowed (guards against decompression bombs)."""


class InvalidNameError(LiteEmbedError):
    """A class name that is empty, only punctuation/whitespace, or too long."""


class UnknownHintError(LiteEmbedError):
    """A coarse hint that is not a word of the model's vocabulary."""


class ModelNotFoundError(LiteEmbedError):
    """An unknown model id, or a model whose text tower the engine cannot drive."""


class CheckpointError(LiteEmbedError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class OptimizationCancelled(LiteEmbedError):
    """The progress callback asked the optimisation to stop."""
