"""Texts with learned words in them: `{name}` stands for the registered class `name`'s token
embedding, `{{` and `}}` are literal braces, anything else is CLIP's own text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from liteembed.errors import InvalidNameError
from liteembed.names import name_key, validate_name

# Far more than any CLIP context holds (77 tokens); refused before tokenizing.
MAX_TEXT_CHARS = 2000

_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class ClassWord:
    """`{name}` in a text: the learned word of the registered class `name`."""

    name: str
    key: str


Prompt = list[str | ClassWord]


def parse_prompt(text: str, *, field: str) -> Prompt:
    """A text as pieces: plain text, and `ClassWord`s where it says `{name}`; InvalidNameError
    says what is wrong with a text that cannot be one."""
    if not text.strip():
        raise InvalidNameError(f"{field} must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidNameError(f"{field} is longer than {MAX_TEXT_CHARS} characters")
    pieces: Prompt = []
    plain: list[str] = []
    position = 0
    for match in _BRACES.finditer(text):
        plain.append(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            plain.append(token[0])
        elif match.group(1) is not None:
            name = validate_name(match.group(1), field=f"{field}: the class name in {token!r}")
            pieces += ["".join(plain), ClassWord(name, name_key(name))]
            plain = []
        else:
            raise InvalidNameError(
                f"{field} has an unmatched {token!r} (write {{{{ or }}}} for a literal brace)"
            )
    pieces.append("".join(plain + [text[position:]]))
    return [p for p in pieces if p != ""]
