"""A second look: a question the model answers unsure of is asked again of the picture shifted a little.

A checkpoint folder may carry `second_look.json`; the loader reads it beside the weights, and the
scheduler applies it where it chooses an answer's first token, so the app and
`python -m mmchat evaluate` answer alike. For a question of one of its `families` (the world's
grammar, `mmchat.data.phrasing`, names a question's family) whose first answer token the model
picks with a probability under `below`, the same prompt is run over four more views of the image,
each the picture with a border of its own background `shift` model-input pixels wide on two sides
(top and left, bottom and right, top and right, bottom and left). The patch grid then falls across
the objects four other ways; the token is chosen from the mean of the five views' log-probabilities.

Why: many of the shipped model's wrong answers turn on where an object falls on the patch grid:
counts too few in scenes of 4-6 objects with two of them a few pixels apart at its 96 px, a small
object's colour or shape misread. On diagnostic sets of the independent renderer
(models/mmchat-shapes/README.md), asking again the questions it was unsure of (1-15 % of each
family's) took its wrong answers from 15 to 6 of 3,000 at 224 px and from 16 to 8 of 2,100 at 96 px.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..data.phrasing import parse
from .checkpoint_files import read_beside

LOOK_FILE = "second_look.json"
# Where each view's border goes: (left, top, right, bottom), in units of `shift`.
BORDERS = ((1, 1, 0, 0), (0, 0, 1, 1), (0, 1, 1, 0), (1, 0, 0, 1))


@dataclass(frozen=True)
class SecondLook:
    families: tuple[str, ...]  # the question families asked again, e.g. ("count",)
    below: float  # asked again when the first token's probability is under this
    shift: int  # the border's width, in the model's input pixels

    @classmethod
    def from_pretrained(cls, source: str | Path) -> SecondLook | None:
        """The rule saved beside a checkpoint (a folder, or a hub repo's file), or None if it has none."""
        config = read_beside(source, LOOK_FILE)
        return None if config is None else cls(tuple(config["families"]), float(config["below"]), int(config["shift"]))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / LOOK_FILE
        path.write_text(json.dumps({"families": list(self.families), "below": self.below, "shift": self.shift}, indent=1))
        return path

    def applies(self, question: str) -> bool:
        """Whether `question` (as the model is asked it) is of a family this rule looks again for."""
        parsed = parse(question, easy_vqa=False)
        return parsed is not None and parsed.family in self.families

    def views(self, image: Image.Image, input_size: tuple[int, int]) -> list[Image.Image]:
        """The image four more ways, each bordered on two sides by its background; `input_size`:
        the (width, height) the model reads, which sets the border in the image's own pixels."""
        dx = max(1, round(image.width * self.shift / input_size[0]))
        dy = max(1, round(image.height * self.shift / input_size[1]))
        image = image.convert("RGB")
        # The background: the commonest colour of the top row, as a median (scenes carry pixel noise).
        fill = tuple(int(c) for c in np.median(np.asarray(image)[0], axis=0))
        return [ImageOps.expand(image, border=(left * dx, top * dy, right * dx, bottom * dy), fill=fill)
                for left, top, right, bottom in BORDERS]


def mean_log_probs(logits: Any) -> Any:
    """(V + 1, vocab) logits of one prompt over the image and its views -> (vocab,) their mean log-probability."""
    return logits.float().log_softmax(dim=-1).mean(dim=0)
