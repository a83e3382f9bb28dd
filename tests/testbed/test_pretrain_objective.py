"""The pretraining objective: label-aware soft targets, the loss built on them, less colour in
captions and the fixed-step schedule."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from testbed import World, default_world
from testbed.pretrain import clip_loss, lr_factor, names_own_class, pair_weights
from testbed.world import COLOURS


@pytest.fixture(scope="module")
def world() -> World:
    return default_world()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits, 1), 1).mean()


def test_caption_names_its_class_only_by_the_whole_word(world: World) -> None:
    sun, star = world.class_index("sun"), world.class_index("sunflower")
    captions = ["a photo of a sun.", "a photo of a star.", "a sunflower", "a photo of a sun."]
    classes = torch.tensor([sun, sun, star, star])
    # the category word names no class; "sun" inside "sunflower" is not the word "sun"
    assert names_own_class(captions, classes, world).tolist() == [True, False, True, False]


def test_pair_weights_identical_captions_and_label_aware_partial_positives() -> None:
    captions = ["a circle.", "a photo of a circle.", "a photo of a blob.", "a circle.", "a moon."]
    classes = torch.tensor([0, 0, 0, 0, 1])
    names = torch.tensor([True, True, False, True, True])
    plain = pair_weights(captions)
    assert torch.equal(plain, pair_weights(captions, classes, names, label_weight=0.0))
    expected_plain = torch.eye(5)
    expected_plain[0, 3] = expected_plain[3, 0] = 1.0
    assert torch.equal(plain, expected_plain)

    w = pair_weights(captions, classes, names, label_weight=0.5)
    # identical captions stay full positives, whatever the label weight
    assert w[0, 3] == w[3, 0] == 1.0
    assert torch.equal(w.diagonal(), torch.ones(5))
    # a caption naming class 0 is a partial positive for every other image of class 0 ...
    assert w[0, 1] == w[1, 0] == w[2, 1] == w[2, 0] == 0.5
    # ... but a category-only caption is not one for the other images of that class
    assert w[0, 2] == w[1, 2] == w[3, 2] == 0.0
    # other classes stay negatives
    assert w[4, :4].eq(0).all() and w[:4, 4].eq(0).all()


def test_clip_loss_without_shared_positives_is_standard_clip() -> None:
    torch.manual_seed(0)
    img = F.normalize(torch.randn(6, 8), dim=-1)
    txt = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    weights = pair_weights([f"caption {i}" for i in range(6)])
    logits = scale * img @ txt.t()
    y = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y))
    assert torch.allclose(clip_loss(img, txt, scale, weights), expected, atol=1e-6)


def test_clip_loss_normalises_rows_for_images_and_columns_for_captions() -> None:
    torch.manual_seed(1)
    img = F.normalize(torch.randn(3, 8), dim=-1)
    txt = F.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(7.0)
    # images 0 and 1 show class 0; caption 0 names it, caption 1 only names its category
    captions = ["a photo of a circle.", "a photo of a blob.", "a moon."]
    w = pair_weights(captions, torch.tensor([0, 0, 1]), torch.tensor([True, False, True]), 0.5)
    assert w.tolist() == [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]
    logits = scale * img @ txt.t()
    to_text = torch.tensor([[1.0, 0, 0], [1 / 3, 2 / 3, 0], [0, 0, 1.0]])
    to_image = torch.tensor([[2 / 3, 1 / 3, 0], [0, 1.0, 0], [0, 0, 1.0]])
    expected = 0.5 * (
        soft_cross_entropy(logits, to_text) + soft_cross_entropy(logits.t(), to_image)
    )
    assert torch.allclose(clip_loss(img, txt, scale, w), expected, atol=1e-6)


def test_label_aware_loss_prefers_a_class_grouped_to_each_image_apart() -> None:
    # two images of one class, each with its own caption naming the class: plain targets want
    # each image on its own caption only; label-aware ones (weight 0.5: targets 2/3, 1/3) are
    # minimal where an image gives the other caption half its own caption's probability
    captions = ["a photo of a circle.", "a circle."]
    plain = pair_weights(captions)
    aware = pair_weights(captions, torch.tensor([0, 0]), torch.tensor([True, True]), 0.5)
    scale = torch.tensor(20.0)
    apart = torch.eye(2)
    # cosine between the two pairs such that scale * (1 - cos) = ln 2
    half = math.acos(1 - math.log(2) / 20.0) / 2
    grouped = torch.tensor([[math.cos(half), math.sin(half)], [math.cos(half), -math.sin(half)]])
    assert clip_loss(apart, apart, scale, plain) < clip_loss(grouped, grouped, scale, plain)
    assert clip_loss(grouped, grouped, scale, aware) < clip_loss(apart, apart, scale, aware)
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert float(clip_loss(grouped, grouped, scale, aware)) == pytest.approx(entropy, abs=1e-4)


def test_colour_caption_fraction(world: World) -> None:
    colour = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")
    default = world.sample_batch(64, seed=5)
    # at 1 the stream (images and captions) is the original one
    same = world.sample_batch(64, seed=5, colour_caption_p=1.0)
    assert same[1] == default[1] and torch.equal(same[0], default[0])
    none = world.sample_batch(64, seed=5, colour_caption_p=0.0)
    assert torch.equal(none[0], default[0]) and torch.equal(none[2], default[2])
    assert not any(colour.search(c) for c in none[1])
    assert all("  " not in c and not c.startswith(" ") for c in none[1])
    captions = [c for s in range(4) for c in world.sample_batch(64, s, colour_caption_p=0.3)[1]]
    all_colour = [c for s in range(4) for c in world.sample_batch(64, s)[1]]
    kept = sum(bool(colour.search(c)) for c in captions) / sum(
        bool(colour.search(c)) for c in all_colour
    )
    assert 0.2 < kept < 0.4
    # colour words stay in the vocabulary
    assert set(COLOURS) <= set(world.caption_words())


def test_schedule_is_a_function_of_the_step_alone() -> None:
    steps = 200
    lrs = [lr_factor((s - 1) / steps) for s in range(1, steps + 1)]
    assert lrs[0] == 0.0
    assert max(lrs) == pytest.approx(1.0, abs=0.01)
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * (1 - 1 / (0.97 * steps)))))
    assert lrs[-1] < 1e-3
