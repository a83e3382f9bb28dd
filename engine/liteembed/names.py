"""The one rule for the words users give: class names (and labels, hints, confusers, which
follow the same rule), how they are written back, and when two spellings are the same class.

The engine and the service both call these functions, so a name the API accepts is a name the
engine trains, and a name the engine refuses never reaches a queue.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable

from liteembed.errors import InvalidNameError

MAX_NAME_LENGTH = 64
# The key is stored in a 200-character column; a few characters expand a lot under NFKC
# (U+FDFA is 18 letters), so the key's length is checked too.
MAX_KEY_LENGTH = 200
# Beyond letters, digits and marks (any script), a few separators common in names.
NAME_PUNCTUATION = frozenset(" -_'.&()+,/")


def tidy(value: str) -> str:
    """The text as it is stored and returned: NFC, whitespace runs collapsed to one space.
    Compatibility forms ("ＡＢＣ") are kept as the user wrote them; only the key folds them."""
    return " ".join(unicodedata.normalize("NFC", str(value)).split())


def name_key(name: str) -> str:
    """What makes two names the same class: NFKC (full-width and other compatibility forms fold
    to their plain letters) and casefold ("Straße" and "STRASSE"), whitespace collapsed.

    NFKC is applied again after casefolding because casefolding can produce characters that
    NFKC would rewrite; the key is then stable under both.
    """
    folded = unicodedata.normalize("NFKC", str(name)).casefold()
    return " ".join(unicodedata.normalize("NFKC", folded).split())


def validate_name(raw: str, *, field: str = "name", max_length: int = MAX_NAME_LENGTH) -> str:
    """The tidied name, or `InvalidNameError` saying what is wrong with it."""
    name = tidy(raw)
    if not name:
        raise InvalidNameError(f"{field} must not be empty")
    if len(name) > max_length:
        raise InvalidNameError(f"{field} is longer than {max_length} characters")
    for ch in name:
        if unicodedata.category(ch)[0] in "LNM" or ch in NAME_PUNCTUATION:
            continue
        raise InvalidNameError(
            f"{field} {name!r} contains {ch!r}: use letters, digits, spaces and - _ ' . & ( ) + , /"
        )
    if not any(unicodedata.category(ch)[0] in "LN" for ch in name):
        raise InvalidNameError(f"{field} must contain a letter or a digit")
    if len(name_key(name)) > MAX_KEY_LENGTH:
        raise InvalidNameError(
            f"{field} is longer than {MAX_KEY_LENGTH} characters once normalised"
        )
    return name


def validate_words(values: Iterable[str], *, field: str, limit: int) -> list[str]:
    """Each value checked as a name, duplicates (by key) dropped keeping the first spelling.

    The limit counts the values as given, duplicates included: counted after de-duplication,
    a million copies of one word would all be checked before any limit applied."""
    values = list(values)
    if len(values) > limit:
        raise InvalidNameError(f"at most {limit} {field} are allowed, got {len(values)}")
    words: list[str] = []
    seen: set[str] = set()
    for raw in values:
        word = validate_name(raw, field=field)
        key = name_key(word)
        if key not in seen:
            seen.add(key)
            words.append(word)
    return words


def hint_form(hint: str) -> str:
    """A hint as the vocabulary spells its words: lower case, single spaces."""
    return " ".join(str(hint).lower().split())


def unknown_hints(hints: Iterable[str], is_word: Callable[[str], bool]) -> list[str]:
    """The hints the model cannot anchor on. A hint must be a vocabulary word, or a phrase made
    only of vocabulary words ("curved shape"): the anchor is only meaningful where the model has
    seen the words."""
    unknown = []
    for hint in hints:
        form = hint_form(hint)
        if is_word(form):
            continue
        parts = form.split()
        if len(parts) < 2 or not all(is_word(part) for part in parts):
            unknown.append(hint)
    return unknown


__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_NAME_LENGTH",
    "NAME_PUNCTUATION",
    "hint_form",
    "name_key",
    "tidy",
    "unknown_hints",
    "validate_name",
    "validate_words",
]
