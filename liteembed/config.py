"""Every switch of the LiteEmbed reconstruction (docs/method.md).

The defaults were chosen on the validation held-out classes of the mini CLIP's world, never on
the test classes (benchmarks/results/validation_search.md): 10 steps (more overfit 4 shots),
coarse alignment k=8 / lambda_c=1 (+0.8 HM with a category hint, neutral without), two augmented
views (+0.6), fine separation off (-0.4 at its best setting), the raw token parameterisation (the
PCA box cost 0.7). Early stopping is off: at 10 steps its rule (min_steps=10) cannot fire."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

NegativeSource = Literal["vocabulary", "confusers", "registered"]


@dataclass(frozen=True)
class OptimizationConfig:
    # Budget and optimiser.
    steps: int = 10
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    # Subspaces: the first k principal components of the word features are "coarse".
    k: int = 8
    # Loss weights: L = L_align + lambda_c * L_coarse + lambda_f * L_fine.
    lambda_c: float = 1.0
    lambda_f: float = 0.0
    # Fine separation penalises fine-subspace cosines to negatives above this value.
    fine_margin: float = 0.3
    fine_loss: Literal["hinge", "softplus"] = "hinge"
    fine_temperature: float = 0.1  # softplus sharpness; only for fine_loss="softplus"
    # Hard negatives.
    negative_sources: tuple[NegativeSource, ...] = ("vocabulary", "confusers", "registered")
    m: int = 8  # vocabulary words nearest to the prototype
    m_registered: int = 8  # registered classes nearest to the prototype
    # Coarse anchor without hints: mean feature of this many words nearest to the prototype.
    anchor_words: int = 3
    # Prompts the new word is placed in; their features are averaged.
    templates: tuple[str, ...] = ("a photo of a {}.",)
    # Parameterisation of the word: "token" = the raw vector; "pca" = v = mu_E + B_E a.
    parameterization: Literal["token", "pca"] = "token"
    kappa: float = 3.0  # |a_i| <= kappa * sigma_i in "pca" mode
    # Complete B_E to the full token width when the vocabulary spans fewer dimensions (the
    # ablation measured a 5-point loss from confining the word to the span).
    pca_full_basis: bool = True
    # Augmentation: extra views per exemplar (a flip, then random crops); 0 = off.
    augment_views: int = 2
    augment_min_scale: float = 0.8
    # Early stopping on the exemplars: all correct by `stop_margin` (cosine) and the loss flat.
    early_stopping: bool = False
    stop_margin: float = 0.02
    min_steps: int = 10
    patience: int = 5
    flat_tolerance: float = 0.01  # relative loss change over `patience` steps counted as flat
    # Hold one exemplar out (K >= 2) to pick the step count, then retrain on all for that many.
    holdout_stopping: bool = False
    short_context: bool = True
    loss_curve_points: int = 100  # the diagnostics' loss curve is subsampled to at most this

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.k >= 1, "k must be >= 1"),
            (self.lambda_c >= 0 and self.lambda_f >= 0, "loss weights must be >= 0"),
            (self.m >= 0 and self.m_registered >= 0, "m must be >= 0"),
            (self.anchor_words >= 1, "anchor_words must be >= 1"),
            (len(self.templates) >= 1, "at least one template"),
            (all(t.count("{}") == 1 for t in self.templates), "each template needs one '{}'"),
            (self.parameterization in ("token", "pca"), "parameterization: token or pca"),
            (self.fine_loss in ("hinge", "softplus"), "fine_loss: hinge or softplus"),
            (self.kappa > 0, "kappa must be > 0"),
            (self.augment_views >= 0, "augment_views must be >= 0"),
            (0 < self.augment_min_scale <= 1, "augment_min_scale in (0, 1]"),
            (self.patience >= 1 and self.min_steps >= 0, "patience >= 1, min_steps >= 0"),
            (
                set(self.negative_sources) <= {"vocabulary", "confusers", "registered"},
                "negative_sources: vocabulary, confusers, registered",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid OptimizationConfig: {message}")
        # Lists from JSON/settings become tuples so the config stays hashable and frozen.
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "negative_sources", tuple(self.negative_sources))
        object.__setattr__(self, "betas", tuple(self.betas))

    def with_(self, **changes: Any) -> OptimizationConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self.__dataclass_fields__}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


DEFAULT_CONFIG = OptimizationConfig()
__all__ = ["DEFAULT_CONFIG", "NegativeSource", "OptimizationConfig"]
