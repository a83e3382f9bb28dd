"""Fast checks of the synthetic world: rendering, structure, captions, held-out hygiene."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import open_clip
import pytest
import torch

from testbed import RARE_RATE, World, default_world
from testbed.world import TEMPLATES
from tests.helpers.engine_files import ENGINE_DIR

CONFIG = ENGINE_DIR / "model_configs" / "liteembed-mini.json"


@pytest.fixture(scope="module")
def world() -> World:
    return default_world()


@pytest.fixture(scope="module")
def tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def captions(world: World) -> list[str]:
    # a few hundred real pretraining captions (full batches: class draw, attributes, templates)
    out: list[str] = []
    for seed in range(6):
        out += world.sample_batch(64, seed)[1]
    return out


def test_render_deterministic_and_shaped(world: World) -> None:
    a = world.render_tensor(["hexagon", "coin", 0], n=3, seed=7)
    b = world.render_tensor(["hexagon", "coin", 0], n=3, seed=7)
    c = world.render_tensor(["hexagon", "coin", 0], n=3, seed=8)
    assert a.shape == (9, 3, 64, 64) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_render_pil_matches_tensor(world: World) -> None:
    imgs = world.render(["starfish", "leaf"], n=2, seed=3)
    x = world.render_tensor(["starfish", "leaf"], n=2, seed=3)
    assert len(imgs) == 4
    assert all(im.size == (64, 64) and im.mode == "RGB" for im in imgs)
    back = torch.from_numpy(np.array(imgs[1])).float() / 255
    # tensors are already quantised to 8 bits, so the PIL round trip is exact
    assert torch.allclose(back.permute(2, 0, 1), x[1], atol=1e-6)


def test_every_class_renders_something(world: World) -> None:
    x = world.render_tensor(list(range(len(world.classes))), n=1, seed=0)
    assert x.shape[0] == len(world.classes)
    # the object differs from the background: images are not flat
    assert bool((x.flatten(1).std(1) > 0.03).all())


def test_structure(world: World) -> None:
    per_cat = Counter(c.category for c in world.classes)
    base_per_cat = Counter(c.category for c in world.base_classes)
    assert len(per_cat) >= 8 and min(per_cat.values()) >= 8
    assert min(base_per_cat.values()) >= 8
    assert len(world.split("test_heldout")) >= 12
    assert len(world.split("val_heldout")) >= 6
    assert {c.split for c in world.classes} == {
        "base",
        "val_heldout",
        "test_heldout",
        "val_lookalike",
    }
    # the look-alike validation classes are never seen, like most test classes
    assert len(world.split("val_lookalike")) >= 6
    assert all(c.rarity == 0.0 for c in world.split("val_lookalike"))
    names = world.class_names
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z]+", n) for n in names)
    assert not set(names) & set(world.categories)
    # both kinds of held-out class exist in both held-out splits
    for split in ("test_heldout", "val_heldout"):
        rar = [c.rarity for c in world.split(split)]
        assert 0.0 in rar and any(r and r > 0 for r in rar)
    assert all(c.rarity is None for c in world.base_classes)
    assert all(c.rarity is not None and c.rarity < 0.01 for c in world.classes if c.split != "base")
    assert len(world.caption_words()) > 100


def test_heldout_names_are_clean_single_tokens(world: World, tokenizer) -> None:
    other = set()
    for w in world.caption_words():
        other.update(tokenizer.encode(w))
    for c in world.classes:
        if c.split == "base":
            continue
        ids = tokenizer.encode(c.name)
        assert len(ids) == 1, c.name
        if c.rarity == 0.0:
            # never-seen names share no word piece with anything the captions say
            assert ids[0] not in other, c.name
            assert c.name not in world.caption_words()


def test_class_draw_frequencies(world: World) -> None:
    cls = world.sample_classes(200_000, torch.Generator().manual_seed(0))
    counts = torch.bincount(cls, minlength=len(world.classes)).float() / len(cls)
    for c in world.classes:
        if c.rarity == 0.0:
            assert counts[c.index] == 0, c.name
        elif c.rarity:
            assert 0.0 < counts[c.index] < 0.01, c.name
            assert abs(float(counts[c.index]) - RARE_RATE) < 0.0006
    base = counts[[c.index for c in world.base_classes]]
    assert float(base.min()) > 0.005


def test_captions(world: World, captions: list[str], tokenizer) -> None:
    vocab = set(world.caption_words())
    never = {c.name for c in world.never_classes}
    words = Counter(w for cap in captions for w in re.findall(r"[a-z]+", cap))
    assert set(words) <= vocab
    assert not set(words) & never
    # the category word appears alone in the class slot
    cat_slot = [
        cap for cap in captions if any(cap == f"a photo of a {k}." for k in world.categories)
    ]
    assert cat_slot
    # the evaluation prompt is one of the pretraining templates
    assert any(t == "a photo of a {name}." for t, _ in TEMPLATES)
    ctx = json.loads(CONFIG.read_text())["text_cfg"]["context_length"]
    for cap in world.longest_captions():
        assert len(tokenizer.encode(cap)) + 2 <= ctx, cap
