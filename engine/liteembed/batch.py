"""What every phase of one `learn_classes` call shares (`Batch`), and what a run of the batched
loop returns (`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from liteembed.backend import ClipBackend
from liteembed.config import OptimizationConfig
from liteembed.losses import LossInputs
from liteembed.parameterisation import Parameterisation
from liteembed.problem import ClassProblem
from liteembed.requests import ProgressCallback
from liteembed.vocab import Vocabulary


@dataclass
class RunResult:
    params: torch.Tensor
    curves: list[list[float]]
    steps_run: list[int]
    stop_reasons: list[str]
    holdout_margins: list[list[float]]
    holdout_accuracy: list[list[float]]
    # Per class and step of a hold-out run: the held-out images' mean cosine to the word, and
    # the share of evidence images the word leaves to something else.
    holdout_similarity: list[list[float]]
    evidence_kept: list[list[float]]
    # With `Batch.final_from`: the final rows' parameters after each step (index t - 1 after t).
    snapshots: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Batch:
    """What every phase of one `learn_classes` call shares."""

    backend: ClipBackend
    vocabulary: Vocabulary
    problems: list[ClassProblem]
    param: Parameterisation
    config: OptimizationConfig
    init: torch.Tensor  # (classes, parameter width) starting parameters
    progress: ProgressCallback | None
    total_steps: int  # over all phases, for progress events
    lr: float  # the absolute Adam step
    peers: list[list[int]]  # per class: the other classes of the batch that are its negatives
    # The step search's batch may carry the final run along: rows from this index on are the
    # classes themselves, trained on all their images and never scored (None: no such rows).
    final_from: int | None = None

    def negatives(self, i: int, current: torch.Tensor) -> torch.Tensor:
        """Class i's negatives: its mined ones, then its peers' current features."""
        own = self.problems[i].negatives
        if not self.peers[i]:
            return own
        return torch.cat([own, current[self.peers[i]]])

    def loss_inputs(
        self, i: int, text: torch.Tensor, include: torch.Tensor, current: torch.Tensor
    ) -> LossInputs:
        problem = self.problems[i]
        if problem.subspace is not None:
            mean, basis, k = problem.subspace
        else:
            mean = self.vocabulary.feature_mean.to(text.device)
            basis = self.vocabulary.feature_basis.to(text.device)
            k = self.config.k
        return LossInputs(
            text=text,
            exemplars=problem.exemplars[include],
            negatives=self.negatives(i, current),
            anchor=problem.anchor,
            feature_mean=mean,
            feature_basis=basis,
            k=k,
            scale=self.backend.logit_scale,
            evidence=problem.evidence.features,
            evidence_own=problem.evidence.own,
            evidence_has_own=problem.evidence.has_own,
        )


__all__ = ["Batch", "RunResult"]
