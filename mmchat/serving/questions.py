"""Checking a question before it reaches a model: one message per way it can be unusable.

Control characters (C0/C1, e.g. NUL, ESC, BEL) and lone surrogates are removed, tabs and line
breaks become spaces; format characters (right-to-left marks, zero-width joiners in emoji) stay.
A question must then be non-empty, at most `MAX_QUESTION_CHARS` long and hold at least one letter.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from .settings import ChatInputError

MAX_QUESTION_CHARS = 1000


def clean_question(text: str) -> str:
    """`text` without control characters or lone surrogates, whitespace runs kept, ends stripped."""
    kept = []
    for c in text:
        category = unicodedata.category(c)
        if category == "Cc":
            kept.append(" " if c in "\t\n\r\x0b\x0c" else "")
        elif category != "Cs":
            kept.append(c)
    return "".join(kept).strip()


def check_question(question: Any) -> str:
    """The cleaned question, or a `ChatInputError` saying what is wrong with it."""
    if question is None:
        question = ""
    if not isinstance(question, str):
        raise ChatInputError(f"The question must be text, not {type(question).__name__}.")
    # Measured before cleaning, so that a megabyte of text is refused without reading it through.
    if len(question.strip()) > MAX_QUESTION_CHARS:
        raise ChatInputError(
            f"That question is {len(question.strip())} characters long; please keep it under {MAX_QUESTION_CHARS}."
        )
    cleaned = clean_question(question)
    if not cleaned:
        if question.strip():
            raise ChatInputError("That question holds only control characters; please type it in words.")
        raise ChatInputError("Please type a question about the image.")
    if not any(c.isalpha() for c in cleaned):
        raise ChatInputError("That question has no letters; please ask it in words (e.g. “What color is the circle?”).")
    return cleaned
