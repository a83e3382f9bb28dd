"""Evaluation tasks: which classes are base and held out, the test gallery, the support draws.

Two sources share one shape (`Task`): the synthetic world of the mini CLIP (its base classes plus
either the validation or the test held-out classes) and an image folder (one subfolder per class)
for users with real weights and data. Test features are encoded once per task; a support draw
holds up to `max_shots` images per class and a K-shot run uses the first K of them (shots are
nested across K, so a larger K only adds images).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from liteembed import ClipBackend
from liteembed.images import to_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# Seeds of the synthetic renders. Test and validation galleries and their support draws never
# share a seed, so no image is both tuned on and tested on.
TEST_GALLERY_SEED = 7_001
VAL_GALLERY_SEED = 8_001
TEST_SUPPORT_SEED = 10_000
VAL_SUPPORT_SEED = 20_000
LOOKALIKE_GALLERY_SEED = 8_601
LOOKALIKE_SUPPORT_SEED = 30_000
# Each held-out split of the world: (gallery seed, support seed).
SPLIT_SEEDS = {
    "test_heldout": (TEST_GALLERY_SEED, TEST_SUPPORT_SEED),
    "val_heldout": (VAL_GALLERY_SEED, VAL_SUPPORT_SEED),
    "val_lookalike": (LOOKALIKE_GALLERY_SEED, LOOKALIKE_SUPPORT_SEED),
}
SPLITS = tuple(SPLIT_SEEDS)

# The synthetic world's look-alikes of its test held-out classes: the base classes built the same
# way with one part more or fewer (7-gon: 6- and 8-gon), completed with every base class that
# textual inversion's word took 5 % or more of the test images of (K=4, 10 draws; the table is
# in docs/benchmark.md): the parallelogram (ramp) takes the diamond, the lens (leaf) the oval.
WORLD_LOOKALIKES: dict[str, tuple[str, ...]] = {
    "coin": ("hexagon", "octagon"),
    "badge": ("sheriff", "rosette"),
    "poppy": ("lotus", "aster"),
    "hand": ("plus", "stitch", "jack"),
    "zipper": ("sergeant",),
    "shield": ("frame", "nut"),
    "grille": ("menu", "barcode", "hash"),
    "tartan": ("chess", "hash"),
    "beads": ("pearls", "necklace"),
    "domino": ("waffle", "pips", "pearls"),
    "ramp": ("diamond",),
    "leaf": ("oval",),
    # The look-alike validation classes: the base classes each was built from.
    "wedge": ("triangle",),
    "flare": ("sun", "burst"),
    "spur": ("starfish", "spike"),
    "fern": ("shamrock", "clover"),
    "brace": ("elbow", "hammer"),
    "ripple": ("halo", "target"),
    "moth": ("ellipsis",),
    "sickle": ("moon",),
}


@dataclass
class SupportDraw:
    """Up to `max_shots` support images per class (base and held-out) and their features."""

    images: dict[str, list[Image.Image]]
    features: dict[str, torch.Tensor]  # (n, embed_dim), L2-normalised

    def shots(self, name: str, k: int) -> list[Image.Image]:
        return self.images[name][:k]

    def shot_features(self, name: str, k: int) -> torch.Tensor:
        return self.features[name][:k]


@dataclass
class Task:
    name: str
    base: list[str]
    heldout: list[str]
    test_features: torch.Tensor  # (N, embed_dim), L2-normalised
    test_labels: torch.Tensor  # (N,) indices into base + heldout
    make_draw: Callable[[int], SupportDraw]  # draw index -> support images of every class
    max_shots: int
    hints: dict[str, tuple[str, ...]] = field(
        default_factory=dict
    )  # coarse hints per held-out class
    # Held-out class -> base classes it is easily taken for (scored as a confusion rate).
    lookalikes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Held-out class -> the name it is registered under, where that is not its own (a base class
    # learned as new must not start from its own word); its own name is then hidden from mining.
    aliases: dict[str, str] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)
    _draws: dict[int, SupportDraw] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.base + self.heldout

    @property
    def base_mask(self) -> torch.Tensor:
        return self.test_labels < len(self.base)

    def draw(self, index: int) -> SupportDraw:
        """Support draw `index`, built once and then reused by every method and every K."""
        if index not in self._draws:
            self._draws[index] = self.make_draw(index)
        return self._draws[index]


def encode(backend: ClipBackend, images: Sequence[Image.Image], batch: int = 512) -> torch.Tensor:
    chunks = [backend.encode_images(images[i : i + batch]) for i in range(0, len(images), batch)]
    return torch.cat(chunks).float().cpu() if chunks else torch.empty(0, backend.embed_dim)


def support_from_lists(backend: ClipBackend, images: dict[str, list[Image.Image]]) -> SupportDraw:
    names = list(images)
    flat = [img for name in names for img in images[name]]
    features = encode(backend, flat)
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name in names:
        out[name] = features[start : start + len(images[name])]
        start += len(images[name])
    return SupportDraw(images=images, features=out)


# ------------------------------------------------------------------ the synthetic world


def world_task(
    backend: ClipBackend,
    split: str = "test_heldout",
    *,
    test_per_class: int = 50,
    max_shots: int = 16,
) -> Task:
    """Base classes of the mini CLIP's world plus the `split` held-out classes (one of
    `SPLITS`); each held-out class gets its category word as its coarse hint."""
    from testbed import default_world

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    world = default_world()
    base = [c.name for c in world.split("base")]
    heldout_classes = world.split(split)
    heldout = [c.name for c in heldout_classes]
    classes = base + heldout
    gallery_seed, support_seed = SPLIT_SEEDS[split]
    images = world.render(classes, n=test_per_class, seed=gallery_seed)
    features = encode(backend, images)
    labels = torch.arange(len(classes)).repeat_interleave(test_per_class)

    return Task(
        name=f"synthetic-{split}",
        base=base,
        heldout=heldout,
        test_features=features,
        test_labels=labels,
        make_draw=world_draws(backend, world, classes, max_shots, support_seed),
        max_shots=max_shots,
        hints={c.name: (c.category,) for c in heldout_classes},
        lookalikes={n: WORLD_LOOKALIKES[n] for n in heldout if n in WORLD_LOOKALIKES},
        info={
            "source": "testbed.default_world",
            "split": split,
            "test_per_class": test_per_class,
            "gallery_seed": gallery_seed,
            "support_seed": support_seed,
            "never_seen": [c.name for c in heldout_classes if c.rarity == 0.0],
            "rare": [c.name for c in heldout_classes if c.rarity],
        },
    )


def world_draws(
    backend: ClipBackend, world: Any, classes: list[str], max_shots: int, seed: int
) -> Callable[[int], SupportDraw]:
    """Support draw `index` of the synthetic world: `max_shots` renders of every class from seed
    `seed + index`."""

    def make_draw(index: int) -> SupportDraw:
        rendered = world.render(classes, n=max_shots, seed=seed + index)
        per_class = {
            name: rendered[i * max_shots : (i + 1) * max_shots] for i, name in enumerate(classes)
        }
        return support_from_lists(backend, per_class)

    return make_draw


# ------------------------------------------------------------------ an image folder


def class_name_of(folder: str) -> str:
    """Folder names like "golden_retriever" read as "golden retriever" in the prompts."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def folder_task(
    backend: ClipBackend,
    root: Path,
    heldout: Sequence[str],
    *,
    test_per_class: int = 50,
    max_shots: int = 16,
    seed: int = 0,
) -> Task:
    """An image-folder dataset: one subfolder per class (its name is the class name).

    Per class the files are shuffled under `seed`; a support pool of up to `max_shots` (at most
    half the class's images) is set aside and up to `test_per_class` of the rest form the test
    gallery. Draw d takes the pool in a d-seeded order, so draws differ in their shots only.
    `heldout` names folders (or their class names); the other folders are the base classes.
    """
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {
        p.name: sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for p in folders
    }
    files = {k: v for k, v in files.items() if len(v) >= 2}
    wanted = {h.strip() for h in heldout}
    heldout_folders = [f for f in files if f in wanted or class_name_of(f) in wanted]
    missing = wanted - set(heldout_folders) - {class_name_of(f) for f in heldout_folders}
    if missing:
        raise ValueError(f"held-out classes not found (or with < 2 images): {sorted(missing)}")
    if not heldout_folders:
        raise ValueError("choose at least one held-out class (--heldout)")
    base_folders = [f for f in files if f not in heldout_folders]
    if not base_folders:
        raise ValueError("at least one base class (a folder not held out) is needed")
    order = base_folders + heldout_folders
    pools: dict[str, list[Path]] = {}
    test_files: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(order):
        shuffled = list(files[folder])
        random.Random(f"{seed}:{folder}").shuffle(shuffled)
        pool_size = min(max_shots, len(shuffled) // 2)
        pools[folder] = shuffled[:pool_size]
        test = shuffled[pool_size : pool_size + test_per_class]
        test_files += test
        labels += [index] * len(test)
    shots = min(len(p) for p in pools.values())
    features = encode(backend, [_open(p) for p in test_files])
    names = {f: class_name_of(f) for f in order}

    def make_draw(index: int) -> SupportDraw:
        per_class: dict[str, list[Image.Image]] = {}
        for folder in order:
            pool = list(pools[folder])
            random.Random(f"{seed}:{folder}:draw{index}").shuffle(pool)
            per_class[names[folder]] = [_open(p) for p in pool]
        return support_from_lists(backend, per_class)

    return Task(
        name=f"folder-{root.name}",
        base=[names[f] for f in base_folders],
        heldout=[names[f] for f in heldout_folders],
        test_features=features,
        test_labels=torch.tensor(labels, dtype=torch.long),
        make_draw=make_draw,
        max_shots=shots,
        info={"source": str(root), "split_seed": seed, "test_images": len(test_files)},
    )


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return to_rgb(image).copy()
