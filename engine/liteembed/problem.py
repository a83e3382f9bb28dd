"""Everything fixed about a class before the optimisation starts: its exemplar views, its hard
negatives, its coarse anchor and the word's starting vector.

Negatives come from three sources (config.negative_sources): the vocabulary words nearest to the
class prototype (`liteembed.negatives`), the caller's confusers, and the already registered
classes nearest to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from liteembed.augment import ViewEncoder, as_rgb, augment_image, first_views
from liteembed.backend import ClipBackend
from liteembed.bank import ReferenceBank
from liteembed.config import OptimizationConfig
from liteembed.errors import NoImagesError
from liteembed.evidence import Evidence, gather_evidence
from liteembed.names import hint_form, unknown_hints
from liteembed.negatives import excluded_words, rank_words
from liteembed.requests import ClassRequest, ImageData, ProtectedClass
from liteembed.vocab import WORD_TEMPLATE, Vocabulary, words_in


@dataclass
class ClassProblem:
    """Everything fixed about one class before the loop starts."""

    name: str
    exemplars: torch.Tensor  # (V, E) image features incl. augmented views
    groups: torch.Tensor  # (V,) index of the original image each view comes from
    prototype: torch.Tensor  # (E,)
    negatives: torch.Tensor  # (N, E)
    negative_names: list[str]
    negative_sources: list[str]
    anchor: torch.Tensor | None  # (E,)
    anchor_words: list[str]
    init_vector: torch.Tensor  # (d_tok,)
    init_from: str
    originals: torch.Tensor  # (K, E) features of the un-augmented images
    evidence: Evidence  # images of other things the word must not win
    holdout: int | None = None  # image index left out of the alignment loss in phase 1
    # Local subspaces (config.subspaces == "local"): mean, orthonormal basis, coarse width.
    subspace: tuple[torch.Tensor, torch.Tensor, int] | None = None


def prepare(
    backend: ClipBackend,
    vocabulary: Vocabulary,
    requests: Sequence[ClassRequest],
    names: Sequence[str],
    registered: Mapping[str, torch.Tensor],
    config: OptimizationConfig,
    seed: int,
    *,
    protected: Sequence[ProtectedClass] = (),
    bank: ReferenceBank | None = None,
) -> list[ClassProblem]:
    """One `ClassProblem` per request; `names` are the requests' validated names."""
    device = backend.device
    hint_lists = [[hint_form(h) for h in r.hints if h.strip()] for r in requests]
    for hints in hint_lists:
        validate_hints(vocabulary, hints)
    # The augmented views' features feed only the loss; the images as they are, the model's own.
    encoder = ViewEncoder(backend, backend.view_dtype(config.view_precision))
    view_groups: list[list[int]] = []
    holdouts: list[int | None] = []
    for name, request in zip(names, requests, strict=True):
        if not request.images:
            raise NoImagesError(f"class {name!r} has no images")
        # One generator per class, seeded alike: a class draws the same views and held-out
        # image whether it is learned alone or in a batch.
        generator = torch.Generator().manual_seed(seed)
        groups: list[int] = []
        # One image at a time: decoded (reduced to what the model needs), its views made and
        # preprocessed, then dropped; memory does not grow with the images' pixels or count.
        for index, image in enumerate(request.images):
            views = augment_image(as_rgb(image, backend.decode_side), config, generator)
            encoder.add(views)
            groups += [index] * len(views)
        view_groups.append(groups)
        count = len(request.images)
        holdout = int(torch.randint(count, (1,), generator=generator).item())
        holdouts.append(holdout if count >= 2 else None)
    features = encoder.features().to(device)
    word_features = vocabulary.word_features.to(device)
    registered_names = list(registered)
    registered_features = _registered_features(backend, registered)
    problems: list[ClassProblem] = []
    start = 0
    for name, request, hints, groups, holdout in zip(
        names, requests, hint_lists, view_groups, holdouts, strict=True
    ):
        exemplars = features[start : start + len(groups)]
        start += len(groups)
        group_tensor = torch.tensor(groups, device=device)
        originals = exemplars[first_views(groups, device)]
        prototype = F.normalize(originals.mean(dim=0), dim=-1)
        excluded = excluded_words(name, hints)
        excluded |= {w for other in request.not_negatives for w in words_in(other)}
        ranked = rank_words(vocabulary, word_features, prototype, excluded)
        user_negatives = _encode_originals(backend, request.negative_images).to(device)
        evidence = gather_evidence(
            name=name,
            prototype=prototype,
            mined=ranked[: config.m],
            vocabulary=vocabulary,
            word_features=word_features,
            bank=bank,
            protected=protected,
            user_negatives=user_negatives,
            config=config,
        )
        neg_features: list[torch.Tensor] = []
        neg_names: list[str] = []
        neg_sources: list[str] = []
        if "vocabulary" in config.negative_sources and config.m > 0:
            chosen = ranked[: config.m]
            neg_features.append(word_features[chosen])
            neg_names += [vocabulary.words[i] for i in chosen.tolist()]
            neg_sources += ["vocabulary"] * len(chosen)
        confusers = [
            c.strip() for c in request.confusers if c.strip() and c.strip().lower() != name.lower()
        ]
        if "confusers" in config.negative_sources and confusers:
            neg_features.append(
                backend.encode_texts([WORD_TEMPLATE.format(c) for c in confusers]).to(device)
            )
            neg_names += confusers
            neg_sources += ["confuser"] * len(confusers)
        if "registered" in config.negative_sources and registered_names and config.m_registered > 0:
            keep = [i for i, n in enumerate(registered_names) if n.strip().lower() != name.lower()]
            if keep:
                candidates = registered_features[keep]
                order = torch.argsort(candidates @ prototype, descending=True)[
                    : config.m_registered
                ]
                neg_features.append(candidates[order])
                neg_names += [registered_names[keep[i]] for i in order.tolist()]
                neg_sources += ["registered"] * len(order)
        negatives = (
            torch.cat(neg_features)
            if neg_features
            else torch.empty(0, backend.embed_dim, device=device)
        )
        anchor: torch.Tensor | None = None
        if hints:
            anchor_words = hints
            # Same prompt as the word features, so a one-word hint's anchor is its Z_W row.
            anchor_features = backend.encode_texts([WORD_TEMPLATE.format(h) for h in hints])
            anchor_features = anchor_features.to(device)
        else:
            anchor_rows = ranked[: config.anchor_words]
            anchor_words = [vocabulary.words[i] for i in anchor_rows.tolist()]
            anchor_features = word_features[anchor_rows]
        if len(anchor_features):
            anchor = F.normalize(anchor_features.mean(dim=0), dim=-1)
        subspace = None
        if config.subspaces == "local":
            subspace = local_subspace(torch.cat([anchor_features, negatives]), config.local_k)
        init_vector, init_from = initial_vector(backend, vocabulary, name, ranked)
        problems.append(
            ClassProblem(
                name=name,
                exemplars=exemplars,
                groups=group_tensor,
                prototype=prototype,
                negatives=negatives,
                negative_names=neg_names,
                negative_sources=neg_sources,
                anchor=anchor,
                anchor_words=list(anchor_words),
                init_vector=init_vector,
                init_from=init_from,
                originals=originals,
                evidence=evidence,
                holdout=holdout,
                subspace=subspace,
            )
        )
    return problems


def _encode_originals(backend: ClipBackend, images: Sequence[ImageData]) -> torch.Tensor:
    """(n, E) features of images as they are (no augmented views), a chunk at a time."""
    encoder = ViewEncoder(backend)
    for image in images:
        encoder.add([as_rgb(image, backend.decode_side)])
    if not images:
        return torch.zeros(0, backend.embed_dim)
    return encoder.features()


def local_subspace(
    points: torch.Tensor, coarse: int
) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """PCA of one class's neighbourhood (its anchor and negative word features): the mean, the
    principal directions (E, r) and how many of them are coarse (the rest are fine). None when
    the neighbourhood spans no direction."""
    if points.shape[0] < 2:
        return None
    mean = points.mean(dim=0)
    _, singular, vh = torch.linalg.svd(points - mean, full_matrices=False)
    rank = int((singular > 1e-6 * singular.max().clamp_min(1e-12)).sum().item())
    if rank == 0:
        return None
    return mean, vh[:rank].T.contiguous(), min(coarse, rank)


def _registered_features(
    backend: ClipBackend, registered: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    device = backend.device
    if not registered:
        return torch.empty(0, backend.embed_dim, device=device)
    features = F.normalize(
        torch.stack([_vector(value) for value in registered.values()]).to(device), dim=-1
    )
    if features.shape[1] != backend.embed_dim:
        raise ValueError(
            f"registered features have dimension {features.shape[1]}, "
            f"the model's is {backend.embed_dim}"
        )
    return features


def _vector(value: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """A registered class's feature as a flat float32 CPU tensor (tensors or plain lists)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().reshape(-1)
    return torch.as_tensor(value, dtype=torch.float32).reshape(-1)


def validate_hints(vocabulary: Vocabulary, hints: list[str]) -> None:
    """Raises UnknownHintError for the first hint the model cannot anchor on (the rule is
    `liteembed.names.unknown_hints`, shared with the service)."""
    unknown = unknown_hints(hints, lambda word: vocabulary.index(word) is not None)
    if unknown:
        vocabulary.require_words(unknown[:1])  # raises UnknownHintError with the usual message


def initial_vector(
    backend: ClipBackend, vocabulary: Vocabulary, name: str, ranked: torch.Tensor
) -> tuple[torch.Tensor, str]:
    """The name's mean token embedding when all its tokens are trained, else the nearest word's."""
    table = backend.token_table
    tokens = backend.encode_word_tokens(name)
    if tokens and all(vocabulary.is_trained_token(t) for t in tokens):
        return table[torch.tensor(tokens, device=table.device)].mean(dim=0), f"name:{name}"
    word_index = int(ranked[0].item()) if len(ranked) else 0
    word_tokens = torch.tensor(vocabulary.word_token_ids[word_index], device=table.device)
    return table[word_tokens].mean(dim=0), f"nearest word:{vocabulary.words[word_index]}"


__all__ = ["ClassProblem", "initial_vector", "local_subspace", "prepare", "validate_hints"]
