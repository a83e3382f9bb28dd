"""The name rule shared by the engine and the service."""

from __future__ import annotations

import pytest

from liteembed.errors import InvalidNameError
from liteembed.names import (
    MAX_NAME_LENGTH,
    name_key,
    tidy,
    unknown_hints,
    validate_name,
    validate_words,
)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ＡＢＣ１", "ABC1"),  # full-width compatibility forms
        ("Tea", "tea"),
        ("Straße", "STRASSE"),  # casefold, not lower
        ("ﬁsh", "fish"),  # ligature
        ("café", "cafe\u0301"),  # composed and decomposed accents
        ("  blue   sky ", "blue sky"),
    ],
)
def test_same_class_same_key(a: str, b: str) -> None:
    assert name_key(a) == name_key(b)


def test_different_names_keep_different_keys() -> None:
    assert name_key("coin") != name_key("coins")
    assert name_key("é") != name_key("e")


def test_names_are_returned_as_given_only_tidied() -> None:
    assert validate_name("  ＡＢＣ１  x ") == "ＡＢＣ１ x"
    assert tidy("cafe\u0301") == "café"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("--", "letter or a digit"),
        ("bad\x00name", "contains"),
        ("a" * (MAX_NAME_LENGTH + 1), "longer than"),
        ("\ufdfa" * 12, "once normalised"),  # 12 characters, 216 once NFKC expands them
    ],
)
def test_bad_names_say_why(raw: str, says: str) -> None:
    with pytest.raises(InvalidNameError, match=says):
        validate_name(raw)


def test_words_drop_duplicates_by_key_and_respect_the_limit() -> None:
    assert validate_words(["Star", "star", "ＳＴＡＲ", "moon"], field="hints", limit=4) == [
        "Star",
        "moon",
    ]
    with pytest.raises(InvalidNameError, match="at most 1 hints"):
        validate_words(["star", "moon"], field="hints", limit=1)


def test_the_limit_counts_duplicates_as_given() -> None:
    with pytest.raises(InvalidNameError, match="at most 16 hints are allowed, got 200"):
        validate_words(["star"] * 200, field="hints", limit=16)


def test_hints_are_words_or_phrases_of_words() -> None:
    words = {"curved", "shape", "star", "ice cream"}
    assert unknown_hints(["Star", "curved  shape", "ice cream"], words.__contains__) == []
    assert unknown_hints(["qqzx", "curved qqzx", "shapes"], words.__contains__) == [
        "qqzx",
        "curved qqzx",
        "shapes",
    ]
