"""A hand-built text forward pass that lets one token slot hold an arbitrary vector.

open_clip's `encode_text` only takes token ids. To optimise a new word we need the same
computation starting from token *embeddings*: look the ids up, overwrite the placeholder row with
the learnable vector, then positional embedding, transformer, final norm, end-of-text pooling and
projection exactly as `encode_text` does. For causal towers the sequence can be cut right after
the last end-of-text token: nothing after it can influence the pooled position.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from liteembed.errors import ModelNotFoundError
from liteembed.text_prefix import PrefixStates, supports_prefix_states

PLACEHOLDER = "{}"


@dataclass(frozen=True)
class TokenizedTemplates:
    """Token ids of templates with one placeholder each; `slots` is the placeholder's position."""

    ids: torch.Tensor  # (T, L) long
    slots: torch.Tensor  # (T,) long
    eot_positions: torch.Tensor  # (T,) long


class TextTower:
    """The parts of an open_clip text encoder (CLIP, or CustomTextCLIP with a TextTransformer)."""

    def __init__(self, model: nn.Module) -> None:
        # CLIP keeps the text modules on the model itself; CustomTextCLIP nests them in `.text`.
        owner = model.text if hasattr(model, "text") else model
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if not all(hasattr(owner, name) for name in needed):
            raise ModelNotFoundError(
                f"the text tower {type(owner).__name__} is not a token-embedding transformer; "
                "learning a new word needs direct access to its token embeddings"
            )
        self.token_embedding: nn.Embedding = owner.token_embedding
        self.positional_embedding: torch.Tensor = owner.positional_embedding
        self.transformer: nn.Module = owner.transformer
        self.ln_final: nn.Module = owner.ln_final
        self.text_projection = getattr(owner, "text_projection", None)
        self.attn_mask: torch.Tensor | None = getattr(owner, "attn_mask", None)
        self.pool_type: str = getattr(
            owner, "text_pool_type", getattr(owner, "pool_type", "argmax")
        )
        self.eos_token_id: int | None = getattr(owner, "text_eos_id", None)
        if getattr(owner, "cls_emb", None) is not None:
            raise ModelNotFoundError("text towers with a CLS embedding are not supported")
        if self.pool_type not in ("argmax", "eos"):
            raise ModelNotFoundError(
                f"text pooling {self.pool_type!r} is not supported; need end-of-text pooling"
            )
        self.context_length: int = int(self.positional_embedding.shape[0])
        self.is_causal: bool = _is_causal_mask(self.attn_mask, self.context_length)
        self._dtype: torch.dtype | None = None  # set on a copy in another precision (`cast`)
        # The template's words before the learned word, encoded once (liteembed.text_prefix).
        self.prefix: PrefixStates | None = (
            PrefixStates(self.transformer)
            if self.is_causal and supports_prefix_states(self.transformer)
            else None
        )

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype or self.token_embedding.weight.dtype

    def cast(self, dtype: torch.dtype) -> TextTower:
        """This tower computing in `dtype`: its transformer, final norm and projection copied
        in that precision; the token table is shared (the few rows looked up are cast)."""
        other = copy.copy(self)
        other._dtype = dtype
        other.transformer = copy.deepcopy(self.transformer).to(dtype)
        other.ln_final = copy.deepcopy(self.ln_final).to(dtype)
        projection = self.text_projection
        if isinstance(projection, nn.Module):
            other.text_projection = copy.deepcopy(projection).to(dtype)
        elif projection is not None:
            other.text_projection = projection.detach().to(dtype)
        if self.attn_mask is not None and self.attn_mask.is_floating_point():
            other.attn_mask = self.attn_mask.to(dtype)
        other.prefix = PrefixStates(other.transformer) if self.prefix is not None else None
        return other

    @property
    def token_dim(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Where each sequence's pooled token sits (same rule as open_clip's text_global_pool)."""
        if self.pool_type == "eos" and self.eos_token_id is not None:
            return (ids == self.eos_token_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)

    def forward_embeddings(
        self, x: torch.Tensor, ids: torch.Tensor, *, short_context: bool = True
    ) -> torch.Tensor:
        """Text features (N, embed_dim), unnormalised, from token embeddings `x` (N, L, d_tok)."""
        eot = self.eot_positions(ids)
        length = x.shape[1]
        if short_context and self.is_causal:
            # Causal attention: positions after the last EOT cannot reach any pooled row.
            length = int(eot.max().item()) + 1
        x = x[:, :length].to(self.dtype) + self.positional_embedding[:length].to(self.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        # open_clip's Transformer takes batch-first input and transposes internally when it runs
        # sequence-first, the same call `encode_text` makes.
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self._project(x)

    def encode_ids(self, ids: torch.Tensor, *, short_context: bool = True) -> torch.Tensor:
        """Normalised text features for token ids (N, L), like `encode_text(normalize=True)`."""
        x = self.token_embedding(ids)
        return F.normalize(
            self.forward_embeddings(x, ids, short_context=short_context).float(), dim=-1
        )

    def encode_with_token(
        self,
        templates: TokenizedTemplates,
        token_embedding: torch.Tensor,
        *,
        short_context: bool = True,
    ) -> torch.Tensor:
        """Normalised features (B, T, embed_dim), `token_embedding[b]` in every template's slot."""
        ids = templates.ids.to(self.token_embedding.weight.device)
        if short_context and self.prefix is not None:
            return self._encode_after_prefix(templates, ids, token_embedding)
        slots = templates.slots.to(ids.device)
        n_words, n_templates, length = token_embedding.shape[0], ids.shape[0], ids.shape[1]
        base = self.token_embedding(ids)  # (T, L, d)
        one_hot = F.one_hot(slots, length).to(base.dtype).unsqueeze(-1)  # (T, L, 1)
        vectors = token_embedding.to(base.dtype)[:, None, None, :]  # (B, 1, 1, d)
        # Arithmetic blend instead of in-place assignment keeps the graph differentiable in v.
        x = base.unsqueeze(0) * (1 - one_hot) + vectors * one_hot  # (B, T, L, d)
        x = x.reshape(n_words * n_templates, length, -1)
        flat_ids = ids.repeat(n_words, 1)
        features = self.forward_embeddings(x, flat_ids, short_context=short_context)
        return F.normalize(features.float(), dim=-1).reshape(n_words, n_templates, -1)

    def _encode_after_prefix(
        self, templates: TokenizedTemplates, ids: torch.Tensor, token_embedding: torch.Tensor
    ) -> torch.Tensor:
        """`encode_with_token` over the slot and what follows it only, per template (causal
        towers: the positions before the slot do not depend on the word)."""
        assert self.prefix is not None
        eots = self.eot_positions(ids).tolist()
        vectors = token_embedding.to(self.dtype)[:, None, :]  # (B, 1, d)
        features = []
        for row, slot, eot in zip(ids, templates.slots.tolist(), eots, strict=True):
            positions = self.positional_embedding.to(self.dtype)
            embedded = self.token_embedding(row[: eot + 1]).to(self.dtype) + positions[: eot + 1]
            key = (tuple(row[:slot].tolist()), embedded.device, embedded.dtype)
            kept = self.prefix.states(embedded[:slot], key)
            after = embedded[slot + 1 :].unsqueeze(0).expand(vectors.shape[0], -1, -1)
            x = torch.cat([vectors + positions[slot], after], dim=1)
            x = self.ln_final(self.prefix.run_suffix(x, kept))
            features.append(self._project(x))
        return F.normalize(torch.stack(features, dim=1).float(), dim=-1)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def encode_with_slots(self, prompts: TokenizedPrompts, vectors: torch.Tensor) -> torch.Tensor:
        """Normalised features (N, embed_dim) of token ids whose slots hold `vectors` (M, d_tok),
        slot m at (`prompts.rows[m]`, `prompts.columns[m]`). No gradient."""
        device = self.token_embedding.weight.device
        ids = prompts.ids.to(device)
        with torch.no_grad():
            x = self.token_embedding(ids)
            if prompts.rows.numel():
                x = x.index_put(
                    (prompts.rows.to(device), prompts.columns.to(device)),
                    vectors.to(device=device, dtype=x.dtype),
                )
            return F.normalize(self.forward_embeddings(x, ids).float(), dim=-1)


class PromptTooLongError(ValueError):
    def __init__(self, index: int, tokens: int, context_length: int) -> None:
        super().__init__(f"{tokens} tokens long; the model's context is {context_length}")
        self.index = index


@dataclass(frozen=True)
class TokenizedPrompts:
    """Token ids of prompts whose learned-word slots are listed in order (row, column)."""

    ids: torch.Tensor  # (N, L) long
    rows: torch.Tensor  # (M,) long: the prompt of each slot
    columns: torch.Tensor  # (M,) long: its token position


def tokenize_prompts(
    tokenizer: object, prompts: Sequence[Sequence[str | None]], context_length: int
) -> TokenizedPrompts:
    """Token ids for prompts given as pieces: text, or None for a slot that a vector will fill.

    Text pieces are encoded separately, as in `tokenize_templates` (the same caveat applies: a
    slot should be separated from its neighbours by a space or punctuation). A prompt longer
    than the context raises ValueError instead of being cut.
    """
    encode = getattr(tokenizer, "encode", None)
    sot = getattr(tokenizer, "sot_token_id", None)
    eot = getattr(tokenizer, "eot_token_id", None)
    if encode is None or sot is None or eot is None:
        raise ModelNotFoundError(
            f"tokenizer {type(tokenizer).__name__} is not supported; need open_clip's BPE tokenizer"
        )
    rows: list[list[int]] = []
    slot_rows: list[int] = []
    slot_columns: list[int] = []
    for n, pieces in enumerate(prompts):
        row = [sot]
        for piece in pieces:
            if piece is None:
                slot_rows.append(n)
                slot_columns.append(len(row))
                row.append(sot)  # overwritten; below the EOT id, as argmax pooling needs
            else:
                row.extend(encode(piece))
        row.append(eot)
        if len(row) > context_length:
            raise PromptTooLongError(n, len(row), context_length)
        rows.append(row + [0] * (context_length - len(row)))
    return TokenizedPrompts(
        ids=torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length),
        rows=torch.tensor(slot_rows, dtype=torch.long),
        columns=torch.tensor(slot_columns, dtype=torch.long),
    )


def _is_causal_mask(mask: torch.Tensor | None, length: int) -> bool:
    """True when `mask` blocks exactly the future positions (additive -inf or boolean form)."""
    if mask is None or mask.ndim != 2 or tuple(mask.shape) != (length, length):
        return False
    upper = torch.triu(torch.ones(length, length, dtype=torch.bool, device=mask.device), diagonal=1)
    blocked = mask if mask.dtype == torch.bool else torch.isneginf(mask.float())
    if mask.dtype != torch.bool and not bool((mask.float()[~upper] == 0).all()):
        return False
    return bool((blocked == upper).all())


def tokenize_templates(
    tokenizer: object, templates: Sequence[str], context_length: int
) -> TokenizedTemplates:
    """Token ids for templates holding one `{}` each, with the placeholder as its own token slot.

    The prefix and suffix are encoded separately so the slot is known exactly; CLIP's BPE splits
    words and punctuation independently, so this equals encoding the filled template whenever the
    placeholder is separated from its neighbours by a space or punctuation.
    """
    encode = getattr(tokenizer, "encode", None)
    sot = getattr(tokenizer, "sot_token_id", None)
    eot = getattr(tokenizer, "eot_token_id", None)
    if encode is None or sot is None or eot is None:
        raise ModelNotFoundError(
            f"tokenizer {type(tokenizer).__name__} is not supported; need open_clip's BPE tokenizer"
        )
    if not templates:
        raise ValueError("at least one template is needed")
    rows: list[list[int]] = []
    slots: list[int] = []
    for template in templates:
        if template.count(PLACEHOLDER) != 1:
            raise ValueError(f"template {template!r} must contain exactly one '{{}}' placeholder")
        prefix, suffix = template.split(PLACEHOLDER)
        head = [sot, *encode(prefix)]
        # The placeholder id is irrelevant (its row is overwritten) but must stay below the EOT id,
        # which argmax pooling relies on being the largest id in the row.
        row = [*head, sot, *encode(suffix), eot]
        if len(row) > context_length:
            raise ValueError(f"template {template!r} is longer than the context ({context_length})")
        slots.append(len(head))
        rows.append(row + [0] * (context_length - len(row)))
    ids = torch.tensor(rows, dtype=torch.long)
    return TokenizedTemplates(
        ids=ids,
        slots=torch.tensor(slots, dtype=torch.long),
        eot_positions=torch.tensor([row.index(eot) for row in rows], dtype=torch.long),
    )
