"""Every switch of the LiteEmbed reconstruction (docs/method.md).

The defaults were chosen by validation searches on liteembed-mini-v2's world, never on the test
classes: the pooled hold-out step rule with margin tie-breaks (up to 50 steps; no fixed budget beat
it; two images of each class held out in turn, level with every image and cheaper), two augmented
views (benchmarks/tune.py, benchmarks/results/validation_search-v2.md); image evidence from the
reference bank, the 8 nearest mined words' images, 16 each, at lambda_img=0.3, and with it the
coarse term off (benchmarks/evidence_search.py on the validation classes and base-as-new folds,
benchmarks/results/evidence_search.md: coarse alignment, which gained 0.5 HM without evidence,
pulls the word back toward its category against the evidence). Fine separation and the PCA box
stay off.

Scale-aware parts, so the defaults mean the same on another model: the step size is in units of
the vocabulary's typical token-embedding coordinate (`lr_scale="token"`), the learned word's norm
is capped relative to the real words' norms (`norm_bound`), the step count is picked per batch by
held-out accuracy (`step_rule="holdout"`), and classes learned in one batch are each other's
negatives (`batch_negatives`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

NegativeSource = Literal["vocabulary", "confusers", "registered"]
StepRule = Literal["fixed", "holdout", "holdout-margin"]
# lr 0.5 token units = 0.0108 absolute on liteembed-mini (median word norm 0.245, 128 dims): the
# 0.01 the validation search chose there.
TOKEN_LR = 0.5


@dataclass(frozen=True)
class OptimizationConfig:
    # Budget and optimiser. "fixed": `steps` Adam steps. "holdout": images of each class (K >= 2)
    # are held out, the batch trains up to `max_steps` while recording the held-out images'
    # accuracy, pooled over the batch's classes, then every class retrains for the step count
    # that pooled accuracy peaked at ( `steps` when no class has two images). "holdout-margin":
    # the same per class, by the held-out mean margin.
    step_rule: StepRule = "holdout"
    # "holdout": among steps of equal pooled accuracy, the earliest or the best pooled margin.
    holdout_ties: Literal["earliest", "margin"] = "margin"
    # "holdout": how many of a class's images are held out in turn (each in its own copy of the
    # class during the search), pooled together; 1 = one random image, 16 = every image up to 16.
    # Two: level with every image on validation (docs/performance.md), with fewer search rows.
    holdout_folds: int = 2
    steps: int = 10
    max_steps: int = 50
    lr: float = TOKEN_LR
    # "token": lr is in units of median real-word norm / sqrt(token width), the size of a
    # typical coordinate of a word's embedding; "absolute": lr is the raw Adam step.
    lr_scale: Literal["token", "absolute"] = "token"
    betas: tuple[float, float] = (0.9, 0.999)
    # The learned word's norm is at most this multiple of the largest real word's (None: free).
    norm_bound: float | None = 1.0
    # Subspaces: the first k principal components of the word features are "coarse".
    k: int = 8
    # "global": the PCA of all vocabulary word features; "local": per class, the PCA of its
    # anchor (hint) and negative word features, whose first `local_k` components are coarse.
    subspaces: Literal["global", "local"] = "global"
    local_k: int = 2
    # Loss weights: L = L_align + lambda_c * L_coarse + lambda_f * L_fine.
    lambda_c: float = 0.0
    lambda_f: float = 0.0
    # Fine separation penalises fine-subspace cosines to negatives above this value.
    fine_margin: float = 0.3
    fine_loss: Literal["hinge", "softplus"] = "hinge"
    fine_temperature: float = 0.1  # softplus sharpness; only for fine_loss="softplus"
    # Hard negatives.
    negative_sources: tuple[NegativeSource, ...] = ("vocabulary", "confusers", "registered")
    m: int = 8  # vocabulary words nearest to the prototype
    m_registered: int = 8  # registered classes nearest to the prototype
    # The other classes of the same learn_classes batch (they will all be registered) are
    # negatives too, at their current feature each step.
    batch_negatives: bool = True
    # Image evidence (liteembed.evidence): images of other classes the word must not win, in a
    # loss term of this weight (0: off): registered classes' exemplars (the `m_protected`
    # nearest), reference-bank images of the `bank_words` nearest mined words (`bank_images`
    # each), and the request's negative images.
    lambda_img: float = 0.3
    m_protected: int = 8
    bank_words: int = 8
    bank_images: int = 16
    # An evidence image counts as taken unless the word's cosine to it is this far below its
    # best other match's (0: only when the word wins it).
    evidence_margin: float = 0.0
    # Weight of each of the request's own negative images ("not this") in the evidence term,
    # against 1 for each registered-class or bank image: as much as a bank word's 16 images
    # (chosen on validation, the evidence search's base-as-new folds).
    user_negative_weight: float = 16.0
    # The hold-out step rule also scores the evidence: the step is chosen by the mean of the
    # held-out accuracy and the share of evidence images the word leaves to their own class.
    holdout_evidence: bool = False
    # A second pass for a class whose word takes its neighbours' images (liteembed.reweigh): a
    # word that keeps less than `reweigh_kept` of its evidence images to their own classes is
    # learned again at evidence weight `reweigh_lambda_img`, and the second word replaces it if
    # it keeps at least `reweigh_min_gain` more (reweigh_kept 0: no second pass). Off unless a
    # model's recorded defaults turn it on (RECORDED_DEFAULTS: where validation chose it).
    reweigh_kept: float = 0.0
    reweigh_lambda_img: float = 1.0
    reweigh_min_gain: float = 0.04
    # ... and, with this, only if its own held-out images fare no worse in the step search.
    reweigh_keep_own: bool = False
    # ... and only if the second word stays this near the first (cosine of their text features;
    # -1: no limit): a word that must move far to release its neighbour's images has left its own.
    reweigh_min_cosine: float = -1.0
    # Acceptance threshold (liteembed.threshold): 0 = as similar as the class's own held-out
    # images, 1 = the top decile of the negatives' similarities.
    threshold_beta: float = 0.5
    # Subtracted from every learned class's threshold: a model-level calibration (the rule's
    # thresholds are consistently a little high or low on a model), chosen on validation.
    threshold_offset: float = 0.0
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
    # Also the hold-out step search's: it stops once held-out quality has not improved for
    # 2 * patience steps. 4, not 5: two steps fewer per search, level on validation
    # (benchmarks/results/evidence_search-patience.md); 3 cost 0.3 mean HM there.
    patience: int = 4
    flat_tolerance: float = 0.01  # relative loss change over `patience` steps counted as flat
    short_context: bool = True
    # The text tower's precision during the optimisation steps (the stored feature is always
    # computed at the model's own): "model" as loaded; "bfloat16" a bfloat16 copy of the tower,
    # half the weight traffic of a float32 step; "auto" bfloat16 on a CPU that multiplies
    # bfloat16 natively (AVX512-BF16 or AMX) when the steps run the kept-prefix pass (short
    # context, causal tower), else the model's.
    step_precision: Literal["model", "bfloat16", "auto"] = "auto"
    # The image tower's precision for the class's augmented views during training (their
    # features feed only the loss; the images as they are stay at the model's): "model" as
    # loaded; "bfloat16" a bfloat16 copy of the image tower; "auto" bfloat16 on a CPU that
    # multiplies bfloat16 natively. "model" by default: on validation bfloat16 views cost
    # 0.11 +- 0.03 HM (benchmarks/results/evidence_search-view-precision.md).
    view_precision: Literal["model", "bfloat16", "auto"] = "model"
    loss_curve_points: int = 100  # the diagnostics' loss curve is subsampled to at most this

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1 and self.max_steps >= 1, "steps and max_steps must be >= 1"),
            (self.step_rule in ("fixed", "holdout", "holdout-margin"), "step_rule: see the docs"),
            (self.holdout_ties in ("earliest", "margin"), "holdout_ties: earliest or margin"),
            (self.holdout_folds >= 1, "holdout_folds must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.lr_scale in ("token", "absolute"), "lr_scale: token or absolute"),
            (self.norm_bound is None or self.norm_bound > 0, "norm_bound must be > 0 or None"),
            (self.subspaces in ("global", "local"), "subspaces: global or local"),
            (self.local_k >= 1, "local_k must be >= 1"),
            (self.k >= 1, "k must be >= 1"),
            (
                self.lambda_c >= 0 and self.lambda_f >= 0 and self.lambda_img >= 0,
                "loss weights must be >= 0",
            ),
            (
                min(self.m_protected, self.bank_words, self.bank_images) >= 0,
                "m_protected, bank_words and bank_images must be >= 0",
            ),
            (
                self.evidence_margin >= 0 and self.user_negative_weight > 0,
                "evidence_margin must be >= 0 and user_negative_weight > 0",
            ),
            (
                0 <= self.reweigh_kept <= 1
                and self.reweigh_lambda_img >= 0
                and self.reweigh_min_gain >= 0
                and -1 <= self.reweigh_min_cosine <= 1,
                "reweigh_kept must be in [0, 1], reweigh_lambda_img and reweigh_min_gain >= 0, "
                "reweigh_min_cosine in [-1, 1]",
            ),
            (0 <= self.threshold_beta <= 2, "threshold_beta must be in [0, 2]"),
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
                self.step_precision in ("model", "bfloat16", "auto"),
                "step_precision: model, bfloat16 or auto",
            ),
            (
                self.view_precision in ("model", "bfloat16", "auto"),
                "view_precision: model, bfloat16 or auto",
            ),
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


# Models whose defaults were validated (benchmarks/tune.py on the validation classes), with the
# changes to OptimizationConfig() found there, keyed by model id ("name@checkpoint": a retrained
# checkpoint of the same name is another model) or by a bare name (every checkpoint of it). On
# any other model the defaults are a starting point: learn_classes logs a warning once per model.
RECORDED_DEFAULTS: dict[str, dict[str, Any]] = {
    # Its thresholds accept 95 % of the validation classes' fresh images once lowered by this
    # (benchmarks/open_set.py --split val_heldout: the known images' 5th-percentile margin).
    # The second pass for words that take their neighbours' images, its second word kept only
    # near the first (benchmarks/evidence_search.py, 10 draws per protocol,
    # benchmarks/results/evidence_search-reweigh-cosine.md): look-alike validation classes +0.44
    # +- 0.12 HM (9 of 10 draws), validation classes -0.08 +- 0.14, base-as-new +0.03 +- 0.03.
    # Its evidence weight 1.5, not 1 (evidence_search-reweigh-strength.md): look-alike validation
    # classes +0.26 +- 0.08 (9 of 10), validation classes -0.15 +- 0.11, base-as-new +0.00.
    "liteembed-mini-v2@a03cbbb3c42e": {
        "threshold_offset": 0.029,
        "reweigh_kept": 0.85,
        "reweigh_min_cosine": 0.9,
        "reweigh_lambda_img": 1.5,
    },
}


def recorded_defaults(model_id: str) -> OptimizationConfig | None:
    """The validated defaults of `model_id` ("name@checkpoint", or a bare name), None if none."""
    changes = RECORDED_DEFAULTS.get(model_id, RECORDED_DEFAULTS.get(model_id.split("@", 1)[0]))
    return None if changes is None else OptimizationConfig(**changes)


def from_recorded(values: dict[str, Any]) -> OptimizationConfig:
    """A config saved as a dict (`to_dict`); unknown keys are ignored, and a dict saved before a
    switch existed keeps its meaning: before the scale-aware switches its lr is absolute, its
    step count fixed (or per-class hold-out margin), no norm bound, no batch negatives; before
    the hold-out tie-break and folds, one random image is held out and the earliest tie wins;
    before image evidence, none is used; before the evidence weights, a negative image weighs 1;
    before the second pass for words that take their neighbours' images, there is none;
    before the step precision, the steps run at the model's."""
    known = OptimizationConfig.__dataclass_fields__
    data = {k: v for k, v in values.items() if k in known}
    # saved before the hold-out rule had tie-breaks and folds: one random image, earliest of ties
    data.setdefault("holdout_ties", "earliest")
    data.setdefault("holdout_folds", 1)
    # saved before image evidence: none in the loss or the step rule
    data.setdefault("lambda_img", 0.0)
    data.setdefault("holdout_evidence", False)
    # saved before the evidence term's margin and the weight of the request's negative images
    data.setdefault("evidence_margin", 0.0)
    data.setdefault("user_negative_weight", 1.0)
    # saved before the second pass for the words that take their neighbours' images: none
    data.setdefault("reweigh_kept", 0.0)
    # saved before the second word's nearness limit: none
    data.setdefault("reweigh_min_cosine", -1.0)
    # saved before the step precision: the model's own
    data.setdefault("step_precision", "model")
    # saved before the views' precision: the model's own
    data.setdefault("view_precision", "model")
    if "lr_scale" not in values:
        data["lr_scale"] = "absolute"
        data.setdefault("norm_bound", None)
        data.setdefault("batch_negatives", False)
        data.setdefault(
            "step_rule", "holdout-margin" if values.get("holdout_stopping") else "fixed"
        )
    return OptimizationConfig(**data)


__all__ = [
    "RECORDED_DEFAULTS",
    "NegativeSource",
    "OptimizationConfig",
    "StepRule",
    "from_recorded",
    "recorded_defaults",
]
