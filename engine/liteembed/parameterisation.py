"""How the learned word is parameterised: the raw token vector, or a box in the vocabulary's PCA
coordinates; either way its norm is capped relative to the real words'."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from liteembed.config import OptimizationConfig
from liteembed.vocab import Vocabulary


@dataclass
class Parameterisation:
    """v = mean + basis @ a with |a| <= box, or v = a when `basis` is None; |v| <= max_norm."""

    mean: torch.Tensor | None
    basis: torch.Tensor | None
    box: torch.Tensor | None
    max_norm: float | None = None

    def to_token(self, params: torch.Tensor) -> torch.Tensor:
        if self.basis is None or self.mean is None:
            return params
        return self.mean + params @ self.basis.T

    def from_token(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.basis is None or self.mean is None:
            return vectors.clone()
        return self.clamp((vectors - self.mean) @ self.basis)

    def clamp(self, params: torch.Tensor) -> torch.Tensor:
        """Into the box, then (if the word is longer than max_norm) scaled back to max_norm."""
        params = self._box(params)
        if self.max_norm is None:
            return params
        vector = self.to_token(params)
        norm = vector.norm(dim=-1, keepdim=True)
        if bool((norm <= self.max_norm).all()):
            return params
        vector = vector * torch.clamp(self.max_norm / norm.clamp_min(1e-12), max=1.0)
        if self.basis is None or self.mean is None:
            return vector
        return self._box((vector - self.mean) @ self.basis)

    def _box(self, params: torch.Tensor) -> torch.Tensor:
        if self.box is None:
            return params
        return torch.maximum(torch.minimum(params, self.box), -self.box)


def parameterisation(
    vocabulary: Vocabulary,
    config: OptimizationConfig,
    device: torch.device,
    max_norm: float | None,
) -> Parameterisation:
    if config.parameterization == "token":
        return Parameterisation(mean=None, basis=None, box=None, max_norm=max_norm)
    rank = max(vocabulary.token_rank, 1)
    basis = vocabulary.token_basis.to(device)
    std = vocabulary.token_std.to(device).clone()
    if config.pca_full_basis:
        # Directions the vocabulary does not span get the smallest spanned std: the word may move
        # there (confining it cost accuracy), but no further than along the vocabulary's weakest
        # axis.
        floor = (
            std[:rank][std[:rank] > 0].min()
            if bool((std[:rank] > 0).any())
            else std.new_tensor(1e-3)
        )
        std[rank:] = floor
    else:
        basis, std = basis[:, :rank], std[:rank]
    return Parameterisation(
        mean=vocabulary.token_mean.to(device),
        basis=basis,
        box=config.kappa * std,
        max_norm=max_norm,
    )


__all__ = ["Parameterisation", "parameterisation"]
