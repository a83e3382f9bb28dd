"""Known concepts as competitors: a class is beaten when a background word is nearer to the image
by more than the margin, never by a word named like itself, and the ranking score's sign is
exactly the decision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from liteembed import ReferenceBank, Vocabulary
from liteembed.background import (
    Background,
    background_score,
    background_words,
    beaten,
    nearest_background,
    recorded_margin,
    rival,
)


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_a_word_nearer_by_more_than_the_margin_beats_the_class() -> None:
    classes = torch.tensor([0.70, 0.70, 0.70, 0.70])
    words = torch.tensor([0.80, 0.705, 0.60, -torch.inf])
    assert beaten(classes, words, 0.01).tolist() == [True, False, False, False]
    # A negative margin lets a word a little less near beat the class; a large one, none.
    assert beaten(classes, words, -0.02).tolist() == [True, True, False, False]
    assert not beaten(classes, words, 0.2).any()


def test_the_score_is_accepted_exactly_when_the_threshold_holds_and_no_word_beats() -> None:
    generator = torch.Generator().manual_seed(0)
    similarity = torch.rand(200, generator=generator)
    excess = torch.rand(200, generator=generator) - 0.5
    words = torch.rand(200, generator=generator)
    for margin in (-0.05, 0.0, 0.01, 0.1):
        score = background_score(excess, similarity, words, margin)
        decided = (excess >= 0) & ~beaten(similarity, words, margin)
        assert torch.equal(score >= 0, decided)
        # Never above the class's own excess: the rule only ever rejects more.
        assert torch.all(score <= excess)


def test_the_nearest_word_and_no_competitor_without_words() -> None:
    background = Background(words=["red", "blue"], features=unit([1.0, 0.0], [0.0, 1.0]))
    images = unit([0.9, 0.1], [0.2, 0.8])
    index, similarity = nearest_background(images, background)
    assert index.tolist() == [0, 1]
    assert torch.allclose(similarity, torch.stack([images[0, 0], images[1, 1]]))
    empty = background.without(["red", "blue"])
    index, similarity = nearest_background(images, empty)
    assert index.tolist() == [-1, -1] and torch.isinf(similarity).all()


def test_a_class_is_never_beaten_by_a_word_named_like_itself() -> None:
    background = Background(words=["hexagon", "octagon", "star"], features=torch.zeros(3, 2))
    similarities = torch.tensor([0.9, 0.8, 0.1])
    assert rival(similarities, background, "coin") == 0
    # Named like the nearest word (any case or width): the next one is its rival.
    assert rival(similarities, background, "Hexagon") == 1
    assert rival(similarities, background, "ＨＥＸＡＧＯＮ") == 1
    only = Background(words=["hexagon"], features=torch.zeros(1, 2))
    assert rival(torch.tensor([0.9]), only, "hexagon") == -1
    assert background.without(["OCTAGON"]).words == ["hexagon", "star"]


def test_background_words_are_the_banks_words_the_vocabulary_knows_less_the_excluded(
    vocabulary: Vocabulary,
) -> None:
    known = vocabulary.words[:3]
    bank = ReferenceBank(
        model_id=vocabulary.model_id,
        words=[*known, "notawordofthismodel"],
        features=torch.zeros(4, vocabulary.word_features.shape[1]),
        labels=torch.arange(4),
    )
    background = background_words(vocabulary, bank, exclude=[known[1].upper()])
    assert background.words == [known[0], known[2]]
    rows = [vocabulary.index(w) for w in background.words]
    assert torch.equal(background.features, vocabulary.word_features.float()[rows])
    assert len(background_words(vocabulary, None)) == 0


def test_the_margin_is_recorded_per_model_and_by_bare_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from liteembed import background

    monkeypatch.setattr(background, "RECORDED_MARGINS", {"m@1": 0.02, "n": -0.01})
    assert recorded_margin("m@1") == 0.02
    assert recorded_margin("m@2") is None
    assert recorded_margin("n@7") == -0.01
