"""Where the model looked for each object it named: one small overlay per object of a description.

Built on per-token cross-attention (one (h, w) grid of patch weights per answer token, however
it was recorded: a second pass or the answering pass itself), so it works with either:

    panels = object_panels(image, answer, offsets, token_grids)   # [(phrase, overlay), ...]
    sheet = panel_sheet(panels)                                    # one captioned picture

A phrase's map is the mean of the grids of its tokens (size, colour and shape words).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.shapes import COLORS, SHAPES, SIZES
from .families.base import stretch
from .overlay import overlay_attention

_PHRASE = re.compile(rf"\b(?:{'|'.join(SIZES)})\s+(?:{'|'.join(COLORS)})\s+(?:{'|'.join(SHAPES)})\b", re.IGNORECASE)


def object_phrases(answer: str) -> list[tuple[str, tuple[int, int]]]:
    """The `{size} {color} {shape}` phrases of an answer, in order, with their character spans."""
    return [(m.group(0).lower(), m.span()) for m in _PHRASE.finditer(answer)]


def phrase_tokens(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    """Indices of the tokens (by their character offsets) that overlap a character span."""
    start, end = span
    return [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]


def object_panels(
    image: Image.Image, answer: str, offsets: Sequence[tuple[int, int]], token_grids: np.ndarray
) -> list[tuple[str, Image.Image]]:
    """One (phrase, overlay) per object named in `answer`; `token_grids` is (tokens, h, w), one grid
    per answer token in the order of `offsets`."""
    panels = []
    for phrase, span in object_phrases(answer):
        tokens = [i for i in phrase_tokens(offsets, span) if i < len(token_grids)]
        if tokens:
            grid = stretch(np.asarray(token_grids)[tokens].mean(axis=0))
            panels.append((phrase, overlay_attention(image, grid)))
    return panels


def panel_sheet(panels: Sequence[tuple[str, Image.Image]], tile: int = 168, columns: int = 3) -> Image.Image:
    """The panels as one picture: a grid of small overlays, each captioned with its phrase."""
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    caption_h, pad = 22, 6
    sheet = Image.new("RGB", (columns * (tile + pad) + pad, rows * (tile + caption_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for k, (phrase, overlay) in enumerate(panels):
        x = pad + (k % columns) * (tile + pad)
        y = pad + (k // columns) * (tile + caption_h + pad)
        sheet.paste(overlay.convert("RGB").resize((tile, tile), Image.BILINEAR), (x, y))
        draw.text((x + 2, y + tile + 3), f"{k + 1}. {phrase}", fill=(20, 20, 20), font=font)
    return sheet
