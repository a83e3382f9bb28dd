"""The learned word's text forward pass without recomputing the template's words before it.

In a causal text tower a position only attends to itself and earlier positions, so the states of
a template's tokens before the word's slot ("<start> a photo of a") are the same whatever the word
is. They are computed once per template and kept; every optimisation step then runs the tower
only over the slot and what follows it ("{} . <end>"), attending to the kept states, and the
backward pass stops there too. The result equals the full pass up to float rounding.

Only open_clip's plain `ResidualAttentionBlock` is run this way (its attention, layer scales and
MLP are reused as they are); any other block falls back to the full pass.
"""

from __future__ import annotations

import threading

import torch
from open_clip.transformer import ResidualAttentionBlock, Transformer
from torch import nn


def supports_prefix_states(transformer: nn.Module) -> bool:
    """Whether `transformer` is open_clip's plain stack of self-attention blocks."""
    if type(transformer).forward is not Transformer.forward:
        return False
    blocks = getattr(transformer, "resblocks", None)
    return blocks is not None and all(
        type(block).forward is ResidualAttentionBlock.forward
        and type(block).attention is ResidualAttentionBlock.attention
        and not hasattr(block, "ln_1_kv")
        for block in blocks
    )


class PrefixStates:
    """Per template prefix: each block's normalised input (`ln_1`) at the prefix positions, the
    keys and values the later positions attend to. Filled on first use (the weights are frozen)."""

    def __init__(self, transformer: nn.Module) -> None:
        self.blocks: list[ResidualAttentionBlock] = list(transformer.resblocks)  # type: ignore[attr-defined]
        self.batch_first: bool = bool(getattr(transformer, "batch_first", True))
        self._kept: dict[tuple[object, ...], list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def states(self, embedded: torch.Tensor, key: tuple[object, ...]) -> list[torch.Tensor]:
        """(P, d) per block for the prefix `embedded` (P, d: tokens + positions), by `key`."""
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        with torch.no_grad():
            length = embedded.shape[0]
            mask = causal_mask(length, length, embedded.dtype, embedded.device)
            x = embedded.unsqueeze(0)
            kept = []
            for block in self.blocks:
                kept.append(block.ln_1(x)[0])
                x = self._seq(block(self._seq(x), attn_mask=mask))
        with self._lock:
            self._kept.setdefault(key, kept)
        return kept

    def run_suffix(self, x: torch.Tensor, prefix: list[torch.Tensor]) -> torch.Tensor:
        """The blocks over the suffix `x` (B, S, d) attending to the kept prefix states; the
        output (B, d) is the last position's, the one end-of-text pooling reads."""
        count, length = x.shape[0], x.shape[1]
        keys_length = prefix[0].shape[0] + length
        for n, (block, kept) in enumerate(zip(self.blocks, prefix, strict=True)):
            normed = block.ln_1(x)
            keys = torch.cat([kept.unsqueeze(0).expand(count, -1, -1), normed], dim=1)
            if n == len(self.blocks) - 1:
                # Nothing reads the last block's other positions: only the pooled one is run.
                x, normed = x[:, -1:], normed[:, -1:]
            mask = causal_mask(x.shape[1], keys_length, x.dtype, x.device)
            attended = block.attention(
                q_x=self._seq(normed), k_x=self._seq(keys), v_x=self._seq(keys), attn_mask=mask
            )
            x = x + block.ls_1(self._seq(attended))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x[:, -1]

    def _seq(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-first to the blocks' layout and back (a transpose when they run sequence-first)."""
        return x if self.batch_first else x.transpose(0, 1)


def causal_mask(queries: int, keys: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask: the last `queries` of `keys` positions each see themselves and earlier."""
    offset = keys - queries
    rows = torch.arange(queries, device=device)[:, None] + offset
    blocked = torch.arange(keys, device=device)[None, :] > rows
    return torch.zeros(queries, keys, dtype=dtype, device=device).masked_fill(
        blocked, float("-inf")
    )


__all__ = ["PrefixStates", "causal_mask", "supports_prefix_states"]
