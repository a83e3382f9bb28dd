"""JSON request bodies read with limits: how deep they nest and how many items they hold.

Why not `json.loads`: it reads a body of any shape in one C call that holds the GIL throughout
(2,000,000 copies of `"a"` as labels: 60 ms and a list of 2,000,000 objects, before any count
could be checked) and raises `RecursionError` past about a thousand levels. This reader stops
at the first item past a field's count limit, or the first level past `max_depth`, so a hostile
body costs the bytes read up to that point; strings, most of a real body's bytes (base64
images), are still scanned by the C scanner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from json.decoder import scanstring
from json.scanner import NUMBER_RE
from typing import Any

# Deeper than any body this service takes (an object holding lists of strings), far below the
# depth at which recursion becomes a problem.
MAX_DEPTH = 16
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_LITERALS = {"null": None, "true": True, "false": False}


class JsonRefused(ValueError):
    """The body is not JSON, or is JSON this service will not read (too deep, too many items)."""


class TooManyItems(JsonRefused):
    def __init__(self, field: str, limit: int) -> None:
        super().__init__(f"at most {limit} {field} are allowed; more were sent")
        self.field, self.limit = field, limit


def read_json(
    raw: bytes,
    *,
    field_limits: Mapping[str, int],
    other_limit: int,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """The document in `raw`. An array that is the value of a top-level key in `field_limits`
    may hold that many items; any other array `other_limit`. The whole document holds at most
    the sum of them (plus a few keys), so its size in objects is bounded whatever its shape.

    Raises `TooManyItems` (a count limit, counted as sent: before any de-duplication) or
    `JsonRefused` (invalid, too deep)."""
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"the body is not JSON text (UTF-8): {exc}") from None
    budget = sum(field_limits.values()) + other_limit + 64
    return _Reader(text, field_limits, other_limit, max_depth, budget).document()


class _Reader:
    def __init__(
        self,
        text: str,
        field_limits: Mapping[str, int],
        other_limit: int,
        max_depth: int,
        budget: int,
    ) -> None:
        self.text = text
        self.field_limits = field_limits
        self.other_limit = other_limit
        self.max_depth = max_depth
        self.budget = budget  # values and keys still allowed in the whole document

    def document(self) -> Any:
        value, end = self._value(self._skip(0), depth=0, field=None)
        end = self._skip(end)
        if end != len(self.text):
            raise self._invalid("extra data after the document", end)
        return value

    def _skip(self, index: int) -> int:
        match = _WHITESPACE.match(self.text, index)
        return match.end() if match else index

    def _spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise JsonRefused("the body holds more values than any request may")

    def _value(self, index: int, *, depth: int, field: str | None) -> tuple[Any, int]:
        self._spend()
        char = self.text[index : index + 1]
        if char == '"':
            return self._string(index)
        if char == "{":
            return self._object(index + 1, depth + 1)
        if char == "[":
            return self._array(index + 1, depth + 1, field)
        for literal, value in _LITERALS.items():
            if self.text.startswith(literal, index):
                return value, index + len(literal)
        number = NUMBER_RE.match(self.text, index)
        if number is None:
            raise self._invalid("expecting a value", index)
        integer, fraction, exponent = number.groups()
        try:
            if fraction or exponent:
                return float(integer + (fraction or "") + (exponent or "")), number.end()
            return int(integer), number.end()
        except ValueError:  # an integer of more digits than Python converts
            raise self._invalid("number out of range", index) from None

    def _string(self, index: int) -> tuple[str, int]:
        try:
            return scanstring(self.text, index + 1, True)  # type: ignore[no-any-return]
        except json.JSONDecodeError as exc:
            raise JsonRefused(str(exc)) from None

    def _nest(self, depth: int, index: int) -> None:
        if depth > self.max_depth:
            raise JsonRefused(f"nested deeper than {self.max_depth} levels (at char {index})")

    def _object(self, index: int, depth: int) -> tuple[dict[str, Any], int]:
        self._nest(depth, index)
        found: dict[str, Any] = {}
        index = self._skip(index)
        if self.text.startswith("}", index):
            return found, index + 1
        while True:
            if not self.text.startswith('"', index):
                raise self._invalid("expecting a property name in double quotes", index)
            self._spend()
            key, index = self._string(index)
            index = self._skip(index)
            if not self.text.startswith(":", index):
                raise self._invalid("expecting ':' delimiter", index)
            # Only the top-level object's keys name the fields the limits are for.
            field = key if depth == 1 else None
            found[key], index = self._value(self._skip(index + 1), depth=depth, field=field)
            index = self._skip(index)
            if self.text.startswith("}", index):
                return found, index + 1
            if not self.text.startswith(",", index):
                raise self._invalid("expecting ',' delimiter", index)
            index = self._skip(index + 1)

    def _array(self, index: int, depth: int, field: str | None) -> tuple[list[Any], int]:
        self._nest(depth, index)
        named = field is not None and field in self.field_limits
        limit = self.field_limits[field] if named and field is not None else self.other_limit
        items: list[Any] = []
        index = self._skip(index)
        if self.text.startswith("]", index):
            return items, index + 1
        while True:
            if len(items) == limit:
                raise TooManyItems(field if named and field is not None else "array items", limit)
            item, index = self._value(index, depth=depth, field=None)
            items.append(item)
            index = self._skip(index)
            if self.text.startswith("]", index):
                return items, index + 1
            if not self.text.startswith(",", index):
                raise self._invalid("expecting ',' delimiter", index)
            index = self._skip(index + 1)

    def _invalid(self, what: str, index: int) -> JsonRefused:
        return JsonRefused(f"{what} at char {index}")
