"""What every served text must be, whichever route it came by."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

NOT_BLANK = "[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
"""A JSON-schema pattern for "holds a character that is not whitespace". Not ``\\S``: the
regex engines disagree on what whitespace is (pydantic's counts U+0085, JavaScript's, which JSON
Schema follows, counts U+FEFF and not U+0085), so a client validating against the published
schema would send texts the server refuses. This class excludes both engines' whitespace, so
they agree."""


def served_text(max_chars: int) -> Any:
    """The type of one served text, its limits in its JSON schema: valid Unicode, 1..``max_chars``
    characters, at least one not whitespace."""
    return Annotated[
        str,
        Field(min_length=1, max_length=max_chars, pattern=NOT_BLANK),
        AfterValidator(valid_unicode),
    ]


def valid_unicode(text: str) -> str:
    """``text`` unchanged; ValueError when it holds a lone surrogate (JSON allows ``"\\ud800"``,
    no tokenizer takes it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode: a lone surrogate at character {exc.start}; send UTF-8 text"
        ) from None
    return text
