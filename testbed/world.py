"""The synthetic captioned image world: classes, categories, captions and a vectorised renderer
(the class table is data; the renderer and captioner that read it are one `World` class)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from testbed import shapes as S

IMAGE_SIZE = 64
SUPERSAMPLE = 2  # shapes are drawn at 2x and averaged down: cheap anti-aliasing
RARE_RATE = 0.001  # fraction of pretraining samples given to each "rare" held-out class

# Normalisation used by open_clip's default preprocessing (OPENAI mean/std); training applies
# the same so that PIL images fed through open_clip's transform match what the model saw.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class WorldClass:
    """One class of the world.

    ``rarity`` is the probability that a pretraining sample shows (and names) this class:
    0 for never-seen held-out classes, ``RARE_RATE`` for rare ones, ``None`` for base classes
    (drawn uniformly among base classes).
    """

    index: int
    name: str
    category: str
    split: str
    rarity: float | None
    description: str


# (name, description, shape function, split, rarity) per category. Categories are families whose
# members share a visual construction, so a category word has a visual meaning of its own.
# Held-out classes: "never" ones are neither rendered nor named during pretraining; "rare" ones
# appear in RARE_RATE of the samples each. Their names are single BPE tokens that no caption
# uses otherwise (checked by the tests and reported by pretrain.py).
_NEVER = 0.0
_RARE = RARE_RATE
_B = ("base", None)

_SPEC: dict[str, list[tuple[str, str, S.ShapeFn, tuple[str, float | None]]]] = {
    "polygon": [
        ("triangle", "regular 3-gon", S.regular_polygon(3), _B),
        ("square", "regular 4-gon", S.regular_polygon(4), _B),
        ("pentagon", "regular 5-gon", S.regular_polygon(5), _B),
        ("hexagon", "regular 6-gon", S.regular_polygon(6), _B),
        ("octagon", "regular 8-gon", S.regular_polygon(8), _B),
        ("rectangle", "2:1 rectangle", S.box(0, 0, 1.0, 0.5), _B),
        ("diamond", "elongated rhombus", S.convex([(0, -1), (0.55, 0), (0, 1), (-0.55, 0)]), _B),
        (
            "trapezoid",
            "isosceles trapezoid",
            S.convex([(-1, -0.55), (1, -0.55), (0.45, 0.55), (-0.45, 0.55)]),
            _B,
        ),
        ("coin", "regular 7-gon", S.regular_polygon(7), ("test_heldout", _NEVER)),
        (
            "ramp",
            "parallelogram",
            S.convex([(-1, -0.5), (0.4, -0.5), (1, 0.5), (-0.4, 0.5)]),
            ("test_heldout", _RARE),
        ),
    ],
    "star": [
        ("spike", "3-point star", S.star(3, 0.3), _B),
        ("compass", "4-point star", S.star(4, 0.38), _B),
        ("starfish", "5-point star", S.star(5, 0.42), _B),
        ("sheriff", "6-point star", S.star(6, 0.5), _B),
        ("rosette", "8-point star", S.star(8, 0.55), _B),
        ("sun", "10-point star", S.star(10, 0.6), _B),
        ("burst", "16-point shallow burst", S.star(16, 0.78), _B),
        ("sparkle", "thin 4-point star", S.star(4, 0.16), _B),
        ("badge", "7-point star", S.star(7, 0.52), ("test_heldout", _NEVER)),
        ("comet", "9-point star", S.star(9, 0.57), ("val_heldout", _NEVER)),
    ],
    "flower": [
        ("lily", "3 rounded petals", S.flower(3), _B),
        ("dogwood", "4 rounded petals", S.flower(4), _B),
        ("daisy", "5 rounded petals", S.flower(5), _B),
        ("lotus", "6 rounded petals", S.flower(6), _B),
        ("aster", "8 rounded petals", S.flower(8), _B),
        ("sunflower", "12 rounded petals", S.flower(12, 0.45), _B),
        (
            "shamrock",
            "3 overlapping discs",
            S.dots([(0, 0.45), (0.39, -0.22), (-0.39, -0.22)], 0.52),
            _B,
        ),
        (
            "clover",
            "4 overlapping discs",
            S.dots([(0, 0.5), (0.5, 0), (0, -0.5), (-0.5, 0)], 0.48),
            _B,
        ),
        ("poppy", "7 rounded petals", S.flower(7), ("test_heldout", _NEVER)),
        ("tulip", "10 rounded petals", S.flower(10, 0.38), ("val_heldout", _RARE)),
    ],
    "cross": [
        ("plus", "plus sign, thick arms", S.arms(4, 0.34), _B),
        ("stitch", "thin plus sign", S.arms(4, 0.14), _B),
        ("dagger", "latin cross", S.union(S.box(0, 0, 0.17, 1.0), S.box(0, 0.38, 0.62, 0.17)), _B),
        ("hammer", "T shape", S.union(S.box(0, 0.78, 0.9, 0.2), S.box(0, -0.1, 0.2, 0.9)), _B),
        ("elbow", "L shape", S.union(S.box(-0.6, 0, 0.22, 1.0), S.box(0.0, -0.78, 0.82, 0.22)), _B),
        ("tripod", "3 arms", S.arms(3, 0.26), _B),
        ("jack", "6 arms", S.arms(6, 0.2), _B),
        ("asterisk", "8 arms", S.arms(8, 0.15), _B),
        ("hand", "5 arms", S.arms(5, 0.22), ("test_heldout", _RARE)),
        (
            "antenna",
            "double-barred cross",
            S.union(S.box(0, 0, 0.16, 1.0), S.box(0, 0.5, 0.5, 0.14), S.box(0, -0.05, 0.78, 0.14)),
            ("val_heldout", _NEVER),
        ),
    ],
    "arrow": [
        ("pointer", "arrow", S.arrow_shaft_head(0.14, 0.25, 0.55), _B),
        (
            "shuttle",
            "double-headed arrow",
            S.union(
                S.box(0, 0, 0.6, 0.13),
                S.convex([(0.4, -0.5), (1, 0), (0.4, 0.5)]),
                S.convex([(-0.4, 0.5), (-1, 0), (-0.4, -0.5)]),
            ),
            _B,
        ),
        ("chevron", "one chevron", S.chevrons(1), _B),
        ("rank", "two chevrons", S.chevrons(2), _B),
        ("sergeant", "three chevrons", S.chevrons(3), _B),
        (
            "dart",
            "notched arrowhead",
            lambda u, v: (u + 1.25 * v.abs() <= 1.0) & (u >= -0.2 - v.abs()) & (v.abs() <= 0.8),
            _B,
        ),
        ("signpost", "block arrow", S.arrow_shaft_head(0.3, 0.05, 0.8), _B),
        (
            "bolt",
            "fletched arrow",
            S.union(
                S.arrow_shaft_head(0.09, 0.45, 0.4),
                S.convex([(-1.0, 0.45), (-0.95, 0.0), (-0.55, 0.0), (-0.6, 0.45)]),
                S.convex([(-0.95, 0.0), (-1.0, -0.45), (-0.6, -0.45), (-0.55, 0.0)]),
            ),
            _B,
        ),
        ("zipper", "four chevrons", S.chevrons(4), ("test_heldout", _NEVER)),
        (
            "hook",
            "harpoon: shaft with a one-sided barb",
            S.union(S.box(-0.1, 0, 0.9, 0.12), S.convex([(0.2, 0.0), (1.0, 0.0), (0.2, 0.55)])),
            ("val_heldout", _RARE),
        ),
    ],
    "ring": [
        ("donut", "thick ring", S.annulus(0.55, 1.0), _B),
        ("hoop", "thin ring", S.annulus(0.82, 1.0), _B),
        ("halo", "two concentric rings", S.union(S.annulus(0.8, 1.0), S.annulus(0.42, 0.6)), _B),
        (
            "target",
            "bullseye: two rings and a centre dot",
            S.union(S.annulus(0.82, 1.0), S.annulus(0.48, 0.64), S.disc(0, 0, 0.25)),
            _B,
        ),
        ("frame", "square frame", S.square_frame(0.85, 0.55), _B),
        ("pyramid", "triangle frame", S.polygon_frame(3, 0.5), _B),
        ("nut", "hexagon frame", S.polygon_frame(6, 0.6), _B),
        ("eye", "ring with a centre dot", S.union(S.annulus(0.7, 1.0), S.disc(0, 0, 0.32)), _B),
        ("shield", "pentagon frame", S.polygon_frame(5, 0.58), ("test_heldout", _RARE)),
        (
            "window",
            "two nested square frames",
            S.union(S.square_frame(0.85, 0.66), S.square_frame(0.45, 0.27)),
            ("val_heldout", _NEVER),
        ),
    ],
    "pattern": [
        ("pause", "2 parallel bars", S.bars(2), _B),
        ("menu", "3 parallel bars", S.bars(3), _B),
        ("barcode", "5 parallel bars", S.bars(5), _B),
        ("quilt", "2x2 checkerboard", S.checker(2), _B),
        ("chess", "3x3 checkerboard", S.checker(3), _B),
        (
            "hash",
            "hash sign grid",
            S.union(
                S.box(-0.35, 0, 0.13, 0.95),
                S.box(0.35, 0, 0.13, 0.95),
                S.box(0, -0.35, 0.95, 0.13),
                S.box(0, 0.35, 0.95, 0.13),
            ),
            _B,
        ),
        ("zigzag", "zigzag band", S.band("zigzag"), _B),
        ("wave", "wavy band", S.band("wave"), _B),
        ("grille", "4 parallel bars", S.bars(4), ("test_heldout", _RARE)),
        ("tartan", "4x4 checkerboard", S.checker(4), ("test_heldout", _NEVER)),
    ],
    "cluster": [
        ("berries", "3 dots in a circle", S.dot_ring(3), _B),
        ("buttons", "4 dots in a circle", S.dot_ring(4), _B),
        ("pips", "5 dots in a circle", S.dot_ring(5), _B),
        ("pearls", "6 dots in a circle", S.dot_ring(6), _B),
        ("necklace", "8 dots in a circle", S.dot_ring(8), _B),
        (
            "dice",
            "quincunx of 5 dots",
            S.dots([(-0.6, -0.6), (0.6, -0.6), (0, 0), (-0.6, 0.6), (0.6, 0.6)], 0.26),
            _B,
        ),
        (
            "waffle",
            "3x3 grid of dots",
            S.dots([(x, y) for x in (-0.65, 0, 0.65) for y in (-0.65, 0, 0.65)], 0.2),
            _B,
        ),
        ("ellipsis", "3 dots in a line", S.dots([(-0.68, 0), (0, 0), (0.68, 0)], 0.27), _B),
        ("beads", "7 dots in a circle", S.dot_ring(7), ("test_heldout", _NEVER)),
        (
            "domino",
            "2x3 grid of dots",
            S.dots([(x, y) for x in (-0.36, 0.36) for y in (-0.7, 0, 0.7)], 0.24),
            ("test_heldout", _RARE),
        ),
    ],
    "blob": [
        ("circle", "disc", S.disc(0, 0, 1.0), _B),
        ("oval", "ellipse", S.ellipse(1.0, 0.55), _B),
        (
            "dome",
            "semicircle",
            lambda u, v: (u * u + (v + 0.4) ** 2 <= 1.0) & (v >= -0.4),
            _B,
        ),
        ("moon", "crescent", S.minus(S.disc(0, 0, 1.0), S.disc(0.45, 0.2, 0.82)), _B),
        ("heart", "heart", S.heart(), _B),
        (
            "drop",
            "teardrop",
            S.union(S.disc(0, -0.35, 0.62), S.convex([(-0.56, -0.1), (0.56, -0.1), (0, 1.0)])),
            _B,
        ),
        ("egg", "egg", S.egg(), _B),
        ("slice", "quarter disc", S.sector(0, 90, 1.45, -0.6, -0.6), _B),
        (
            "leaf",
            "lens (vesica)",
            S.intersect(S.disc(-0.62, 0, 1.15), S.disc(0.62, 0, 1.15)),
            ("test_heldout", _NEVER),
        ),
        (
            "pie",
            "disc with a wedge cut out",
            S.minus(S.disc(0, 0, 1.0), S.sector(-35, 70, 1.1)),
            ("val_heldout", _NEVER),
        ),
    ],
}

# The look-alike validation split: never-seen classes each built like one or two base classes with
# one part changed (how the test held-out classes are built, so validation sees a new word take
# its neighbours' images), but none next to a test class or its look-alikes
# (benchmarks.data.WORLD_LOOKALIKES). Listed after the families so no earlier class's index moves.
_LOOKALIKE_VALIDATION: list[tuple[str, str, str, S.ShapeFn]] = [
    ("polygon", "wedge", "right triangle", S.convex([(-1, -0.8), (1, -0.8), (-1, 0.8)])),
    ("star", "flare", "12-point star", S.star(12, 0.66)),
    ("star", "spur", "thin 5-point star", S.star(5, 0.25)),
    (
        "flower",
        "fern",
        "5 overlapping discs",
        S.dots(
            [(0.5 * math.sin(a), 0.5 * math.cos(a)) for a in (0, 1.2566, 2.5133, 3.7699, 5.0265)],
            0.44,
        ),
    ),
    (
        "cross",
        "brace",
        "U shape",
        S.union(S.box(-0.6, 0, 0.2, 0.9), S.box(0.6, 0, 0.2, 0.9), S.box(0, -0.75, 0.8, 0.18)),
    ),
    (
        "ring",
        "ripple",
        "three concentric rings",
        S.union(S.annulus(0.84, 1.0), S.annulus(0.56, 0.7), S.annulus(0.28, 0.42)),
    ),
    (
        "cluster",
        "moth",
        "4 dots in a line",
        S.dots([(-0.75, 0), (-0.25, 0), (0.25, 0), (0.75, 0)], 0.22),
    ),
    ("blob", "sickle", "thin crescent", S.minus(S.disc(0, 0, 1.0), S.disc(0.3, 0.1, 0.88))),
]

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (0.95, 0.88, 0.1),
    "green": (0.1, 0.68, 0.2),
    "blue": (0.12, 0.3, 0.92),
    "purple": (0.55, 0.15, 0.75),
    "pink": (1.0, 0.5, 0.75),
    "brown": (0.5, 0.3, 0.1),
    "white": (0.96, 0.96, 0.96),
    "black": (0.04, 0.04, 0.04),
    "gray": (0.5, 0.5, 0.5),
    "cyan": (0.1, 0.85, 0.9),
}
# size word -> range of the object's half-extent, in units of the image half-width
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.32, 0.42),
    "medium": (0.44, 0.56),
    "large": (0.58, 0.72),
}
TEXTURES = ("solid", "shaded", "speckled", "glossy")
BACKGROUNDS = ("dark", "light", "gradient", "textured")
POSITIONS = ("in the center", "on the left", "on the right", "at the top", "at the bottom")

# Caption templates with sampling weights. {name} is the class name, or the category word in
# the same slot with probability CATEGORY_SLOT_P, so category words are used like class words.
TEMPLATES: list[tuple[str, float]] = [
    ("a photo of a {name}.", 3.0),
    ("a {name}.", 1.0),
    ("{name}", 1.0),
    ("a photo of a {size} {colour} {name}.", 2.0),
    ("a {colour} {name} on a {bg} background.", 2.0),
    ("a {texture} {colour} {name} {pos}.", 1.5),
    ("a picture of a {size} {name}, a kind of {category}.", 1.5),
    ("a {colour} {name}", 1.0),
    ("a drawing of a {texture} {name}{clutter}.", 1.0),
    ("an image of a {size} {texture} {colour} {name} {pos} on a {bg} background.", 1.0),
]
CATEGORY_SLOT_P = 0.2
CLUTTER_P = 0.35
EVAL_TEMPLATE = "a photo of a {}."


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


class World:
    """Classes, captions and rendering of the synthetic world (see the package docstring)."""

    def __init__(self) -> None:
        self.classes: list[WorldClass] = []
        self._fns: list[S.ShapeFn] = []
        for category, members in _SPEC.items():
            for name, desc, fn, (split, rarity) in members:
                self.classes.append(
                    WorldClass(len(self.classes), name, category, split, rarity, desc)
                )
                self._fns.append(fn)
        for category, name, desc, fn in _LOOKALIKE_VALIDATION:
            self.classes.append(
                WorldClass(len(self.classes), name, category, "val_lookalike", _NEVER, desc)
            )
            self._fns.append(fn)
        self.categories: list[str] = list(_SPEC)
        self.class_names: list[str] = [c.name for c in self.classes]
        self._by_name = {c.name: c for c in self.classes}
        assert len(self._by_name) == len(self.classes), "class names must be unique"
        self.colours = list(COLOURS)
        self._colour_tab = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
        self._template_w = torch.tensor([w for _, w in TEMPLATES], dtype=torch.float64)
        self.image_size = IMAGE_SIZE

    # ----------------------------------------------------------------- class lookup
    def split(self, split: str) -> list[WorldClass]:
        return [c for c in self.classes if c.split == split]

    @property
    def base_classes(self) -> list[WorldClass]:
        return self.split("base")

    @property
    def rare_classes(self) -> list[WorldClass]:
        return [c for c in self.classes if c.rarity]

    @property
    def never_classes(self) -> list[WorldClass]:
        return [c for c in self.classes if c.rarity == 0.0]

    def class_index(self, cls: str | int) -> int:
        if isinstance(cls, int):
            return cls
        return self._by_name[cls].index

    def __getitem__(self, cls: str | int) -> WorldClass:
        return self.classes[self.class_index(cls)]

    # ----------------------------------------------------------------- vocabulary
    def caption_words(self) -> list[str]:
        """The distinct words pretraining captions can contain (the model's vocabulary).

        Includes the rare held-out names (they occur in captions, rarely) but never the names of
        never-seen classes.
        """
        words: set[str] = set()
        for tpl, _ in TEMPLATES:
            words.update(re.findall(r"[a-z]+", re.sub(r"\{[a-z]+\}", " ", tpl)))
        words.update(self.categories)
        words.update(self.colours)
        words.update(SIZES)
        words.update(TEXTURES)
        words.update(BACKGROUNDS)
        for p in POSITIONS:
            words.update(p.split())
        words.update(["with", "clutter"])
        words.update(c.name for c in self.classes if c.split == "base" or c.rarity)
        return sorted(words)

    def longest_captions(self) -> list[str]:
        """Worst-case captions (every slot at its longest) to check the context length."""
        long_name = max(self.class_names + self.categories, key=len)
        out = []
        for tpl, _ in TEMPLATES:
            out.append(
                tpl.format(
                    name=long_name,
                    size="medium",
                    colour="orange",
                    texture="speckled",
                    pos="in the center",
                    bg="textured",
                    category=max(self.categories, key=len),
                    clutter=" with clutter",
                )
            )
        return out

    # ----------------------------------------------------------------- sampling
    def sample_classes(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Pretraining class draw: base classes uniformly, each rare class at its rarity."""
        base = torch.tensor([c.index for c in self.base_classes])
        rare = self.rare_classes
        idx = base[torch.randint(len(base), (n,), generator=gen)]
        if rare:
            u = torch.rand(n, generator=gen)
            edges = torch.cumsum(torch.tensor([c.rarity or 0.0 for c in rare]), 0)
            which = torch.searchsorted(edges, u, right=True)
            hit = which < len(rare)
            rare_idx = torch.tensor([c.index for c in rare])
            idx = torch.where(hit, rare_idx[which.clamp(max=len(rare) - 1)], idx)
        return idx

    def sample_batch(
        self, n: int, seed: int, colour_caption_p: float = 1.0
    ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """A pretraining batch: images [n,3,64,64] in [0,1], captions, class indices.

        ``colour_caption_p`` is the probability that a caption whose template has a colour slot
        keeps its colour word; otherwise the slot is left out ("a red hexagon" -> "a hexagon").
        Below 1 it weakens colour as a shortcut for telling the images of a batch apart while the
        colour words stay in the vocabulary. At 1 the random stream is the original one.
        """
        gen = torch.Generator().manual_seed(seed)
        cls = self.sample_classes(n, gen)
        images, attrs = self._render(cls, gen)
        captions = self._captions(cls, attrs, gen, colour_caption_p)
        return images, captions, cls

    def _captions(
        self,
        cls: torch.Tensor,
        attrs: dict[str, torch.Tensor],
        gen: torch.Generator,
        colour_caption_p: float = 1.0,
    ) -> list[str]:
        n = len(cls)
        tpl = torch.multinomial(self._template_w, n, replacement=True, generator=gen).tolist()
        use_cat = (torch.rand(n, generator=gen) < CATEGORY_SLOT_P).tolist()
        keep_colour = [True] * n
        if colour_caption_p < 1.0:
            keep_colour = (torch.rand(n, generator=gen) < colour_caption_p).tolist()
        out = []
        sizes, textures = list(SIZES), TEXTURES
        for i in range(n):
            c = self.classes[int(cls[i])]
            text, _ = TEMPLATES[tpl[i]]
            # the "kind of {category}" template already names the category
            name = c.category if use_cat[i] and "{category}" not in text else c.name
            if not keep_colour[i]:
                text = text.replace("{colour} ", "")
            out.append(
                text.format(
                    name=name,
                    category=c.category,
                    colour=self.colours[int(attrs["colour"][i])],
                    size=sizes[int(attrs["size"][i])],
                    texture=textures[int(attrs["texture"][i])],
                    bg=BACKGROUNDS[int(attrs["bg"][i])],
                    pos=POSITIONS[int(attrs["pos"][i])],
                    clutter=" with clutter" if bool(attrs["clutter"][i]) else "",
                )
            )
        return out

    # ----------------------------------------------------------------- rendering
    def render_tensor(
        self, classes: Sequence[str | int], n: int = 1, seed: int = 0
    ) -> torch.Tensor:
        """``n`` images of each class in ``classes``, class-major: float [N,3,64,64] in [0,1].

        Deterministic for a given (classes, n, seed); poses, colours, textures, backgrounds
        and clutter are random.
        """
        idx = torch.tensor([self.class_index(c) for c in classes], dtype=torch.long)
        cls = idx.repeat_interleave(n)
        gen = torch.Generator().manual_seed(int(seed))
        images, _ = self._render(cls, gen)
        return images

    def render(self, classes: Sequence[str | int], n: int = 1, seed: int = 0) -> list[Image.Image]:
        """Same images as :meth:`render_tensor`, as 64x64 RGB PIL images."""
        x = self.render_tensor(classes, n, seed)
        arr = (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a, "RGB") for a in arr]

    def _render(
        self, cls: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = len(cls)
        H = IMAGE_SIZE
        # --- attributes (all drawn up front so the stream of random numbers is fixed per n)
        size = torch.randint(len(SIZES), (n,), generator=gen)
        lo = torch.tensor([r[0] for r in SIZES.values()])[size]
        hi = torch.tensor([r[1] for r in SIZES.values()])[size]
        radius = lo + (hi - lo) * torch.rand(n, generator=gen)
        limit = (1.0 - radius * 0.95).clamp(min=0.0)
        centre = (torch.rand(n, 2, generator=gen) * 2 - 1) * limit[:, None]
        angle = torch.rand(n, generator=gen) * 2 * math.pi
        colour = torch.randint(len(COLOURS), (n,), generator=gen)
        fg = (self._colour_tab[colour] + 0.06 * torch.randn(n, 3, generator=gen)).clamp(0, 1)
        texture = torch.randint(len(TEXTURES), (n,), generator=gen)
        bg_kind = torch.randint(len(BACKGROUNDS), (n,), generator=gen)
        clutter = torch.rand(n, generator=gen) < CLUTTER_P
        bg_a = torch.rand(n, 3, generator=gen)
        bg_b = torch.rand(n, 3, generator=gen)
        bg_dir = torch.rand(n, generator=gen) * 2 * math.pi
        bg_noise = torch.rand(n, 3, 6, 6, generator=gen)
        speck = torch.rand(n, 1, 32, 32, generator=gen)
        seg = torch.rand(n, 8, 5, generator=gen)  # clutter: x, y, angle, length, colour seed
        seg_col = torch.rand(n, 8, 3, generator=gen)
        n_seg = torch.randint(3, 9, (n,), generator=gen)
        pix_noise = torch.randn(n, 3, H, H, generator=gen) * 0.03

        # --- shape masks at 2x, via local (object) coordinates
        hs = H * SUPERSAMPLE
        mask = torch.zeros(n, hs, hs)
        u, v = self._local_coords(hs, centre, angle, radius)
        for c in torch.unique(cls).tolist():
            sel = (cls == c).nonzero(as_tuple=True)[0]
            mask[sel] = self._fns[c](u[sel], v[sel]).float()
        mask = F.avg_pool2d(mask[:, None], SUPERSAMPLE)  # [n,1,H,H], anti-aliased coverage

        # --- fill texture (at 1x, in local coordinates so it rotates with the object)
        u1, v1 = self._local_coords(H, centre, angle, radius)
        fill = fg[:, :, None, None].expand(n, 3, H, H).clone()
        t = texture[:, None, None, None]
        shade = (0.5 + 0.5 * ((v1 + 1) / 2).clamp(0, 1))[:, None]
        fill = torch.where(t == 1, fill * shade, fill)
        spots = (F.interpolate(speck, size=(H, H), mode="nearest") > 0.8).float()
        speck_col = torch.where(_luminance(fg)[:, None, None, None] > 0.5, 0.0, 1.0)
        fill = torch.where(t == 2, fill * (1 - 0.6 * spots) + 0.6 * spots * speck_col, fill)
        gloss = torch.exp(-((u1 + 0.35) ** 2 + (v1 - 0.35) ** 2) / 0.08)[:, None]
        fill = torch.where(t == 3, fill + (1 - fill) * 0.75 * gloss, fill)

        # --- background; flip to dark/light when it would not contrast with the object
        bg_mean_lum = torch.where(bg_kind == 0, 0.12, 0.85)
        fg_lum = _luminance(fg)
        clash = ((fg_lum - bg_mean_lum).abs() < 0.3) & (bg_kind < 2)
        bg_kind = torch.where(clash, torch.where(fg_lum > 0.5, 0, 1), bg_kind)
        dark = bg_a * 0.22
        light = 0.75 + 0.25 * bg_a
        ys, xs = self._grid(H)
        ramp = (
            xs[None] * torch.cos(bg_dir)[:, None, None]
            + ys[None] * torch.sin(bg_dir)[:, None, None]
            + 1
        ) / 2
        grad = bg_a[:, :, None, None] * (1 - ramp[:, None]) + bg_b[:, :, None, None] * ramp[:, None]
        tex = F.interpolate(bg_noise, size=(H, H), mode="bilinear", align_corners=False)
        bg = torch.where(
            bg_kind[:, None, None, None] == 0, dark[:, :, None, None].expand(n, 3, H, H), 0
        )
        bg = torch.where(
            bg_kind[:, None, None, None] == 1, light[:, :, None, None].expand(n, 3, H, H), bg
        )
        bg = torch.where(bg_kind[:, None, None, None] == 2, grad, bg)
        bg = torch.where(bg_kind[:, None, None, None] == 3, tex, bg)
        # gradient/texture backgrounds are pushed away from the object's luminance too
        far = torch.where(fg_lum > 0.5, 0.35, 0.4)[:, None, None, None]
        near = torch.where(fg_lum > 0.5, 0.0, 0.6)[:, None, None, None]
        bg = torch.where((bg_kind >= 2)[:, None, None, None], near + far * bg, bg)

        img = bg * (1 - mask) + fill * mask

        # --- distractor clutter: a few thin short line segments anywhere in the image
        if bool(clutter.any()):
            idx = clutter.nonzero(as_tuple=True)[0]
            img[idx] = self._clutter(img[idx], seg[idx], seg_col[idx], n_seg[idx])

        img = (img + pix_noise).clamp(0, 1)
        # quantise like an 8-bit image so tensors and PIL images carry the same values
        img = (img * 255).round() / 255
        pos = self._position_word(centre)
        attrs = {
            "colour": colour,
            "size": size,
            "texture": texture,
            "bg": bg_kind,
            "pos": pos,
            "clutter": clutter,
        }
        return img, attrs

    @staticmethod
    def _grid(h: int) -> tuple[torch.Tensor, torch.Tensor]:
        # pixel centres in [-1, 1]; y points up so "top" means positive y
        t = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
        ys, xs = torch.meshgrid(-t, t, indexing="ij")
        return ys, xs

    def _local_coords(
        self, h: int, centre: torch.Tensor, angle: torch.Tensor, radius: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ys, xs = self._grid(h)
        c = torch.cos(angle)[:, None, None]
        s = torch.sin(angle)[:, None, None]
        dx = xs[None] - centre[:, 0, None, None]
        dy = ys[None] - centre[:, 1, None, None]
        r = radius[:, None, None]
        return (dx * c + dy * s) / r, (-dx * s + dy * c) / r

    @staticmethod
    def _position_word(centre: torch.Tensor) -> torch.Tensor:
        x, y = centre[:, 0], centre[:, 1]
        horiz = torch.where(x < 0, 1, 2)
        vert = torch.where(y > 0, 3, 4)
        pos = torch.where(x.abs() >= y.abs(), horiz, vert)
        return torch.where(torch.maximum(x.abs(), y.abs()) < 0.12, 0, pos)

    def _clutter(
        self, img: torch.Tensor, seg: torch.Tensor, col: torch.Tensor, count: torch.Tensor
    ) -> torch.Tensor:
        m, _, h, _ = img.shape
        ys, xs = self._grid(h)
        # only the active (sample, segment) pairs are drawn: ~4x less work than all 8 per sample
        active = torch.arange(seg.shape[1])[None] < count[:, None]
        owner, k = active.nonzero(as_tuple=True)
        sg, cl = seg[owner, k], col[owner, k]
        x0 = sg[:, 0] * 1.8 - 0.9
        y0 = sg[:, 1] * 1.8 - 0.9
        ang = sg[:, 2] * math.pi
        length = 0.08 + 0.14 * sg[:, 3]
        dx = (torch.cos(ang) * length)[:, None, None]
        dy = (torch.sin(ang) * length)[:, None, None]
        px = xs[None] - x0[:, None, None]
        py = ys[None] - y0[:, None, None]
        t = ((px * dx + py * dy) / (length**2)[:, None, None]).clamp(0, 1)
        dist = torch.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2)
        cover = (1.0 - dist / (1.2 / h)).clamp(0, 1)  # about one pixel wide
        # segments rarely overlap, so summing coverage per image is a fine approximation of
        # painting them one after another
        a = torch.zeros(m, 1, h, h).index_add_(0, owner, cover[:, None])
        paint = torch.zeros(m, 3, h, h).index_add_(0, owner, cover[:, None] * cl[:, :, None, None])
        a_c = a.clamp(max=1.0)
        return img * (1 - a_c) + paint / a.clamp(min=1.0)


_DEFAULT: World | None = None


def default_world() -> World:
    """The world the shipped ``liteembed-mini`` checkpoint was pretrained on (cached)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = World()
    return _DEFAULT


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0,1] images -> the normalised input the model expects (open_clip's OPENAI mean/std)."""
    mean = torch.tensor(CLIP_MEAN)[None, :, None, None]
    std = torch.tensor(CLIP_STD)[None, :, None, None]
    return (images - mean) / std
