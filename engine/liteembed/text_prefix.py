"""The learned word's text forward pass without recomputing the template's words before it.

In a causal text tower a position only attends to itself and earlier positions, so the states of
a template's tokens before the word's slot ("<start> a photo of a") are the same whatever the word
is. They are computed once per template and kept; every optimisation step then runs the tower
only over the slot and what follows it ("{} . <end>"), attending to the kept states, and the
backward pass stops there too. The result equals the full pass up to float rounding.

Only open_clip's plain `ResidualAttentionBlock` with a standard `nn.MultiheadAttention` is run this
way (its projections, layer scales and MLP are reused as they are, the attention is computed here
with the kept keys and values); any other block falls back to the full pass.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, Transformer
from torch import nn


def supports_prefix_states(transformer: nn.Module) -> bool:
    """Whether `transformer` is open_clip's plain stack of self-attention blocks, with the packed
    query/key/value projection and no extra key/value rows this module's attention assumes."""
    if type(transformer).forward is not Transformer.forward:
        return False
    blocks = getattr(transformer, "resblocks", None)
    return blocks is not None and all(
        type(block).forward is ResidualAttentionBlock.forward
        and type(block).attention is ResidualAttentionBlock.attention
        and not hasattr(block, "ln_1_kv")
        and _plain_attention(block.attn)
        for block in blocks
    )


def _plain_attention(attn: nn.Module) -> bool:
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and attn.bias_v is None
        and not attn.add_zero_attn
    )


class PrefixStates:
    """Per template prefix: each block's keys and values at the prefix positions, what the later
    positions attend to. Filled on first use (the weights are frozen)."""

    def __init__(self, transformer: nn.Module) -> None:
        self.blocks: list[ResidualAttentionBlock] = list(transformer.resblocks)  # type: ignore[attr-defined]
        self.batch_first: bool = bool(getattr(transformer, "batch_first", True))
        self._kept: dict[tuple[object, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._lock = threading.Lock()

    def states(
        self, embedded: torch.Tensor, key: tuple[object, ...]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block, the prefix's keys and values (heads, P, head width) for the prefix
        `embedded` (P, d: tokens + positions), kept under `key`."""
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        with torch.no_grad():
            length = embedded.shape[0]
            mask = causal_mask(length, length, embedded.dtype, embedded.device)
            x = embedded.unsqueeze(0)
            kept = []
            for block in self.blocks:
                _, keys, values = _heads(block.attn, block.ln_1(x))
                kept.append((keys[0], values[0]))
                x = self._seq(block(self._seq(x), attn_mask=mask))
        with self._lock:
            self._kept.setdefault(key, kept)
        return kept

    def run_suffix(
        self, x: torch.Tensor, prefix: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """The blocks over the suffix `x` (B, S, d) attending to the kept prefix states; the
        output (B, d) is the last position's, the one end-of-text pooling reads."""
        count, length = x.shape[0], x.shape[1]
        # Every block sees the same positions, so one mask serves them all (built once per call,
        # not once per block: a step runs the blocks many times over a few positions).
        mask = causal_mask(length, prefix[0][0].shape[1] + length, x.dtype, x.device)
        for n, (block, (kept_keys, kept_values)) in enumerate(
            zip(self.blocks, prefix, strict=True)
        ):
            queries, keys, values = _heads(block.attn, block.ln_1(x))
            keys = torch.cat([kept_keys.expand(count, -1, -1, -1), keys], dim=2)
            values = torch.cat([kept_values.expand(count, -1, -1, -1), values], dim=2)
            if n == len(self.blocks) - 1:
                # Nothing reads the last block's other positions: only the pooled one is run.
                x, queries, mask = x[:, -1:], queries[:, :, -1:], mask[-1:]
            attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
            attended = attended.transpose(1, 2).reshape(x.shape)
            x = x + block.ls_1(block.attn.out_proj(attended))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x[:, -1]

    def _seq(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-first to the blocks' layout and back (a transpose when they run sequence-first)."""
        return x if self.batch_first else x.transpose(0, 1)


def _heads(
    attn: nn.MultiheadAttention, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (B, heads, L, head width) of `x` (B, L, d), as `attn` projects."""
    count, length, width = x.shape
    packed = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    split = packed.view(count, length, 3, attn.num_heads, width // attn.num_heads)
    queries, keys, values = split.permute(2, 0, 3, 1, 4).unbind(0)
    return queries, keys, values


def causal_mask(queries: int, keys: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask: the last `queries` of `keys` positions each see themselves and earlier."""
    offset = keys - queries
    rows = torch.arange(queries, device=device)[:, None] + offset
    blocked = torch.arange(keys, device=device)[None, :] > rows
    return torch.zeros(queries, keys, dtype=dtype, device=device).masked_fill(
        blocked, float("-inf")
    )


__all__ = ["PrefixStates", "causal_mask", "supports_prefix_states"]
