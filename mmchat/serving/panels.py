"""Where the model looked for each object it named: one small overlay per object of a description.

Built on per-token cross-attention (one (h, w) grid of patch weights per answer token, however
it was recorded: a second pass or the answering pass itself), so it works with either:

    grids = object_grids(answer, offsets, token_grids)            # [(phrase, grid), ...]
    html = panels_html(image_url, image.size, grids)              # for the browser to draw
    panels = object_panels(image, answer, offsets, token_grids)   # [(phrase, overlay), ...]
    sheet = panel_sheet(panels)                                    # one captioned picture

A phrase's map is the mean of the grids of its tokens (size, colour and shape words).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.shapes import COLORS, SHAPES, SIZES
from .families.base import stretch
from .overlay import overlay_attention, overlay_html

_PHRASE = re.compile(rf"\b(?:{'|'.join(SIZES)})\s+(?:{'|'.join(COLORS)})\s+(?:{'|'.join(SHAPES)})\b", re.IGNORECASE)


def object_phrases(answer: str) -> list[tuple[str, tuple[int, int]]]:
    """The `{size} {color} {shape}` phrases of an answer, in order, with their character spans."""
    return [(m.group(0).lower(), m.span()) for m in _PHRASE.finditer(answer)]


def phrase_tokens(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    """Indices of the tokens (by their character offsets) that overlap a character span."""
    start, end = span
    return [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]


def object_grids(
    answer: str, offsets: Sequence[tuple[int, int]], token_grids: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """One (phrase, stretched (h, w) grid) per object named in `answer`; `token_grids` is
    (tokens, h, w), one grid per answer token in the order of `offsets`."""
    grids = []
    for phrase, span in object_phrases(answer):
        tokens = [i for i in phrase_tokens(offsets, span) if i < len(token_grids)]
        if tokens:
            grids.append((phrase, stretch(np.asarray(token_grids)[tokens].mean(axis=0))))
    return grids


def object_panels(
    image: Image.Image, answer: str, offsets: Sequence[tuple[int, int]], token_grids: np.ndarray
) -> list[tuple[str, Image.Image]]:
    """One (phrase, overlay) per object named in `answer` (`object_grids`, drawn over `image`)."""
    return [(phrase, overlay_attention(image, grid)) for phrase, grid in object_grids(answer, offsets, token_grids)]


def panels_html(image_url: str, size: tuple[int, int], grids: Sequence[tuple[str, np.ndarray]], tile: int = 168) -> str:
    """The objects' maps as HTML for the browser to draw: a row of small `overlay_html` maps of the
    image at `image_url` (`size` its (width, height)), each captioned with its phrase. A picture of
    them (`panel_sheet`), saved as PNG and fetched, took 76 ms of the server's time a description
    (medians over 20: the maps drawn 4.8 ms, the sheet 11.6, its PNG 59.6)."""
    figures = "".join(
        f'<div style="display:inline-block;width:{tile}px;line-height:1.3">'
        f"{overlay_html(image_url, size, grid, f'Where the model looked for the {phrase}', width=tile)}"
        f'<div style="font-size:13px;margin-top:3px">{k}. {html.escape(phrase)}</div></div>'
        for k, (phrase, grid) in enumerate(grids, start=1)
    )
    return f'<div class="mmchat-heat-panels" style="display:flex;flex-wrap:wrap;gap:6px">{figures}</div>'


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
