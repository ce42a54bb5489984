"""Draw a patch-grid attention map over the image it came from: as a picture (`overlay_attention`),
or as a small heat layer that the browser stretches, colours and lays over the image it already
shows (`overlay_html`). Both stretch the grid bilinearly and take the ramp after the stretch."""

from __future__ import annotations

import base64
import functools
import html
import struct
import urllib.parse
import zlib

import numpy as np
from PIL import Image

# A small black -> red -> yellow -> white ramp as a palette, so no plotting library is needed: red
# rises over the first third of the weights, green the second, blue the last.
_RAMP = bytes(
    min(255, max(0, round(255 * (3 * v / 255 - shift)))) for v in range(256) for shift in (0, 1, 2)
)


@functools.lru_cache(maxsize=8)
def _palette(alpha: float) -> bytes:
    """Each heat level's colour on the ramp and how much of it shows, as an RGBA palette: 0.1 ms to
    build, once per alpha (given lists, Pillow rounds each entry in Python, call after call)."""
    return bytes(x for v in range(256) for x in (*_RAMP[3 * v : 3 * v + 3], round(alpha * v)))


@functools.lru_cache(maxsize=16)
def _upsample(n: int, size: int) -> np.ndarray:
    """(n, size) float32: Pillow's bilinear resize of n samples to `size`, as the matrix it is (the
    resize is linear): row i is how sample i spreads over the output. Bilinear, as a browser
    stretches a small image, so the picture and the map the browser draws (`overlay_html`) agree."""
    impulses = Image.fromarray(np.eye(n, dtype=np.float32), mode="F")
    return np.asarray(impulses.resize((size, n), Image.BILINEAR))


def _levels(grid: np.ndarray, height: int, width: int, alpha: float) -> Image.Image:
    """`grid` (h, w) upsampled to (height, width) heat levels, as a palette image whose palette is
    the ramp with `alpha * heat` for its alpha."""
    h, w = grid.shape
    heat = _upsample(h, height).T @ np.clip(grid, 0, 1).astype(np.float32) @ _upsample(w, width)  # (H, W)
    level = Image.fromarray(np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    level.putpalette(_palette(alpha), rawmode="RGBA")  # "L" -> "P"
    return level


def overlay_attention(image: Image.Image, grid: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """`grid` (h, w) of weights in [0, 1] -> the image with a heat map blended in (hot = looked).

    Each pixel is base * (1 - alpha * heat) + ramp(heat) * alpha * heat, computed by Pillow on 8-bit
    images (an RGBA palette and a `paste` through its alpha): a fraction of a millisecond for a
    224-px image, where the same blend in float arrays took 3-4 ms (measured side by side), at most
    1 level apart. The heat is upsampled by two small matrix products, not by resizing an 8-bit
    image: 0.08 ms with its rounding to levels, against 0.34 for 224 px, and no rounding to 8 bits
    between the two axes.
    """
    color = _levels(grid, image.height, image.width, alpha).convert("RGBA")
    out = image.convert("RGB")  # a copy even when it is RGB already: `paste` draws in place
    out.paste(color, None, color)  # through the colour's own alpha
    return out


def heat_layer(grid: np.ndarray) -> np.ndarray:
    """`grid` (h, w) of weights in [0, 1] -> (h, w, 2) uint8, grey and alpha: its heat levels as the
    alpha of white, one pixel a cell, the layer the browser stretches over the image and colours
    through `RAMP_FILTER` (`heat_png` writes it). Heat in the alpha, not the grey: the browser
    stretches an image's colours premultiplied by its alpha but its alpha as it is, and a browser
    that cannot apply the filter still shows a fair map (white, as opaque as it is hot)."""
    levels = np.clip(np.asarray(grid, dtype=np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.stack([np.full_like(levels, 255), levels], axis=-1)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def heat_png(grid: np.ndarray) -> bytes:
    """`heat_layer` as the bytes of a PNG file, written here: an 8-bit grey-and-alpha image, each row
    unfiltered, deflated at level 1. Right after an answer (a lone user's, 15.8 ms), `overlay_html`
    took 212 µs this way against 523 with Pillow's `save` of the same layer (medians of 150 answers
    each, alternating): 0.3 ms, 2 % of the answer."""
    layer = heat_layer(grid)
    h, w, _ = layer.shape
    rows = np.zeros((h, 1 + 2 * w), np.uint8)  # each row: its filter byte (0: none), then grey, alpha
    rows[:, 1:] = layer.reshape(h, 2 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0)  # 8 bits, grey + alpha, deflate, no interlace
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)), _chunk(b"IEND", b""))
    )


def _ramp_filter() -> str:
    """A CSS filter, an SVG filter as a data URI, that colours `heat_layer` as `overlay_attention`
    blends: each channel and the alpha become the heat (the layer's alpha), then each channel goes
    through the ramp, which is piecewise linear in thirds, so four table values a channel are
    exactly it. A filter applies to the layer as drawn, after the browser's (bilinear) stretch, so
    the ramp is taken after the stretch, as in the picture. A data URI, not an inline <svg>: the
    chat's HTML sanitizer drops filter primitives (Gradio 6.31 keeps <filter> but not its fe*
    children)."""
    tables = "".join(
        f'<feFunc{c} type="table" tableValues="{" ".join(str(min(1, max(0, k - shift))) for k in range(4))}"/>'
        for shift, c in enumerate("RGB")
    )
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg"><filter id="ramp" color-interpolation-filters="sRGB">'
        '<feColorMatrix type="matrix" values="0 0 0 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1 0"/>'
        f"<feComponentTransfer>{tables}</feComponentTransfer></filter></svg>"
    )
    return f"url('data:image/svg+xml,{urllib.parse.quote(svg)}#ramp')"


RAMP_FILTER = _ramp_filter()


def overlay_html(
    image_url: str, size: tuple[int, int], grid: np.ndarray, alt: str, alpha: float = 0.55, width: int | None = None
) -> str:
    """The heat-map as HTML: the image (`image_url`, `size` its (width, height)) with `heat_layer`
    over it, inline as a PNG data URI of about 200 bytes, which the browser stretches, colours
    (`RAMP_FILTER`) and shows as opaque as `alpha` (the picture's `alpha * heat`). The server
    neither draws nor stores a picture, and no file is fetched for it. With 16 users the app
    answered 50.6 answers/s this way against 38.1 with the picture file (16 alternating runs, faster
    in all): as much as with no heat-map message at all (49.3 against 36.6), so the file's handling
    and fetch, more than the drawing, were its cost. The layer at one pixel a cell, coloured by the
    browser, takes 0.52 ms after an answer against 0.86 for a 96-px layer coloured on the server
    (docs/serving-measurements.md); 0.21 ms since its PNG is written here (`heat_png`). Its app shows
    it at full opacity (`ui.CSS`)."""
    data = base64.b64encode(heat_png(grid)).decode("ascii")
    if width is None:  # small scenes shown larger; the layer is smoothed to any size
        width = min(max(size[0], 224), 448)
    fill = "position:absolute;left:0;top:0;width:100%;height:100%;"
    plain = "margin:0;padding:0;border:0;border-radius:0;max-width:none;max-height:none;object-fit:fill;"
    return (
        f'<div class="mmchat-heat" style="position:relative;display:inline-block;line-height:0;'
        f'width:min(100%,{width}px);aspect-ratio:{size[0]}/{size[1]};overflow:hidden;border-radius:6px">'
        f'<img src="{html.escape(image_url)}" alt="{html.escape(alt)}" style="{fill}{plain}">'
        f'<img src="data:image/png;base64,{data}" alt="" style="{fill}{plain}opacity:{alpha:g};filter:{RAMP_FILTER}">'
        "</div>"
    )
