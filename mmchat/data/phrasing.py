"""ShapesVQA version 2 phrasing: every form of the spec's table, as data, both ways.

- `parse(question)` reads a question in any of the world's forms (any case, with or without the
  final "?", extra spaces, "colour") and returns its family and the v1 template it rephrases, or
  None when it fits no family: the world's grammar, which the serving gate uses to decide what is
  `unanswerable`.
- `rephrase(question, rng)` turns a v1 template into a random v2 form (and surface variant): how
  the v2 data sets and the training conversations are phrased.

easy-vqa's own question forms (its images are in this world) are part of the grammar too; they
are passed on as they are (lower case, with "?"), the form the model was trained on.
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from dataclasses import dataclass

from .shapes import COLORS, SHAPES, SIZES

# family -> its forms; the first is the v1 template (or, for describe, the family's own first form).
FORMS: dict[str, tuple[str, ...]] = {
    "count": (
        "How many {X} are there?",
        "How many {X} are in the image?",
        "How many {X} can you see?",
        "Count the {X}.",
        "What is the number of {X}?",
    ),
    "exist": (
        "Is there a {D}?",
        "Is there any {D}?",
        "Do you see a {D}?",
        "Can you see a {D}?",
        "Does the image contain a {D}?",
    ),
    "query_color": (
        "What color is the {D}?",
        "What is the color of the {D}?",
        "Which color is the {D}?",
        "What color does the {D} have?",
    ),
    "query_shape": ("What shape is the {D}?", "What is the shape of the {D}?", "Which shape is the {D}?"),
    "query_size": ("What size is the {D}?", "Is the {D} small or large?", "How big is the {D}?"),
    "relation": ("Is the {A} {R} the {B}?",),
    "compare": ("Are there more {X} than {Y}?", "Are there more {X} than there are {Y}?", "Do {X} outnumber {Y}?"),
    "describe": ("Describe the image.", "What is in the image?", "What do you see?", "Describe the picture."),
    # Outside the spec: the training-only family the model also answers.
    "where": ("Where is the {D}?",),
}
# The relation's words: the v1 wording first, then the spec's other forms.
RELATIONS: dict[str, tuple[str, ...]] = {
    "to the left of": ("to the left of", "left of", "on the left of"),
    "to the right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
# easy-vqa's 24 forms (its train and test splits use the same 107 questions); C a colour, S a shape.
EASY_VQA_COLORS = ("red", "green", "blue", "yellow", "black", "gray", "teal", "brown")
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
EASY_VQA_FORMS: tuple[str, ...] = tuple(
    f.replace("C", "{C}").replace("S", "{S}")
    for f in (
        "does the image contain a C shape", "does the image contain a S", "does the image not contain a C shape",
        "does the image not contain a S", "is a C shape present", "is a S present", "is no C shape present",
        "is no S present", "is there a C shape in the image", "is there a C shape", "is there a S in the image",
        "is there a S", "is there not a C shape in the image", "is there not a C shape",
        "is there not a S in the image", "is there not a S", "what color is the S", "what color is the shape",
        "what is the C shape", "what is the color of the S", "what is the color of the shape",
        "what shape does the image contain", "what shape is in the image", "what shape is present",
    )
)


def _alternatives(words: tuple[str, ...]) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_SIZE, _COLOR = _alternatives(SIZES), _alternatives(tuple(COLORS))
# "shape(s)" reads as "object(s)": a user's word for the same thing.
_NOUN = _alternatives((*SHAPES, "object", "shape"))
_NOUNS = _alternatives((*(s + "s" for s in SHAPES), "objects", "shapes"))
_SLOTS = {
    "D": rf"(?:(?:{_SIZE}) )?(?:(?:{_COLOR}) )?(?:{_NOUN})",
    "X": rf"(?:(?:{_SIZE}) )?(?:(?:{_COLOR}) )?(?:{_NOUNS})",
    "R": _alternatives(tuple(w for words in RELATIONS.values() for w in words)),
    "C": _alternatives(EASY_VQA_COLORS),
    "S": _alternatives(EASY_VQA_SHAPES),
}
_SLOTS.update(A=_SLOTS["D"], B=_SLOTS["D"], Y=_SLOTS["X"])
_RELATION_OF = {w: canonical for canonical, words in RELATIONS.items() for w in words}


def normalize(question: str) -> str:
    """Lower case, "colour" as "color", single spaces, no final "?" / "." / "!"."""
    text = unicodedata.normalize("NFKC", question).lower()
    text = re.sub(r"\bcolour", "color", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s*[?.!]+$", "", text).strip()


def _pattern(form: str) -> re.Pattern[str]:
    """A form -> a regex over normalized text, one named group per slot; "a" also matches "an"."""
    parts = re.split(r"(\{[a-z]\})", normalize(form))  # normalize lowers the slot names too
    regex = ""
    for part in parts:
        if re.fullmatch(r"\{[a-z]\}", part):
            name = part[1].upper()
            regex += f"(?P<{name}>{_SLOTS[name]})"
        else:
            regex += " ".join("an?" if w == "a" else re.escape(w) for w in part.split(" "))
    return re.compile(regex)


_EASY_PATTERNS = [("easy_vqa", _pattern(f)) for f in EASY_VQA_FORMS]
_PATTERNS = [(family, _pattern(form)) for family, forms in FORMS.items() for form in forms]


@dataclass(frozen=True)
class Parsed:
    family: str  # a ShapesVQA family, "describe", "where" or "easy_vqa"
    canonical: str  # the v1 template it rephrases (easy-vqa's: its own form)


def _slot_text(text: str) -> str:
    return re.sub(r"\bshapes\b", "objects", re.sub(r"\bshape\b", "object", text))


# Remembered: the serving engine parses each question on every turn (the world gate), again as the
# model is asked it (the second look) and every earlier turn of the history; 9-17 us a parse.
@functools.lru_cache(maxsize=4096)
def parse(question: str, easy_vqa: bool = True) -> Parsed | None:
    """The family and v1 template of a question in any of the world's forms; None if it fits none.

    A few easy-vqa questions are ShapesVQA forms too ("what color is the circle?"). Typed in lower
    case, as all of easy-vqa's are, they stay easy-vqa's, word for word; otherwise ShapesVQA's
    grammar reads them first. `easy_vqa=False` leaves easy-vqa's forms out.
    """
    text = normalize(question)
    lower = question.strip() == question.strip().lower()
    patterns = (_EASY_PATTERNS if lower else []) + _PATTERNS + _EASY_PATTERNS if easy_vqa else _PATTERNS
    for family, pattern in patterns:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        if family == "easy_vqa":
            return Parsed(family, text + "?")
        slots = {k: _slot_text(v) for k, v in match.groupdict().items()}
        if "R" in slots:
            slots["R"] = _RELATION_OF[slots["R"]]
        return Parsed(family, FORMS[family][0].format(**slots))
    return None


def _surface(text: str, rng: random.Random) -> str:
    """A surface variant: letter case, "colour", the final mark, extra spaces."""
    if rng.random() < 0.5:
        text = re.sub(r"\bcolor\b", "colour", text)
    if rng.random() < 0.4:
        text = text[:-1] if text[-1] in "?." else text
    case = rng.random()
    if case < 0.3:
        text = text.lower()
    elif case < 0.4:
        text = text.upper()
    if rng.random() < 0.25:
        words = text.split(" ")
        i = rng.randrange(len(words))
        words[i] = words[i] + " " * rng.randint(1, 2)
        text = " ".join(words)
    if rng.random() < 0.1:
        text = " " + text + " "
    return text


def rephrase(question: str, rng: random.Random, surface: bool = True) -> str:
    """A v1 template (or describe form) -> the same question in a random form of its family."""
    parsed = parse(question, easy_vqa=False)
    if parsed is None:
        raise ValueError(f"not a ShapesVQA question: {question!r}")
    form = rng.choice(FORMS[parsed.family])
    # Read the slots back out of the canonical form, then fill the chosen one.
    match = _pattern(FORMS[parsed.family][0]).fullmatch(normalize(parsed.canonical))
    slots = dict(match.groupdict()) if match else {}
    if "R" in slots:
        slots["R"] = rng.choice(RELATIONS[slots["R"]])
    text = form.format(**slots)
    text = re.sub(r"\ba (?=[aeiou])", "an ", text) if rng.random() < 0.5 else text
    return _surface(text, rng) if surface else text
