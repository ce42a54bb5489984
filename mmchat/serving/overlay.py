"""Draw a patch-grid attention map over the image it came from."""

from __future__ import annotations

import numpy as np
from PIL import Image


def overlay_attention(image: Image.Image, grid: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """`grid` (h, w) of weights in [0, 1] -> the image with a heat map blended in (hot = looked)."""
    heat = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8), mode="L")
    heat = np.asarray(heat.resize(image.size, Image.BICUBIC), dtype=np.float32) / 255.0  # (H, W)
    # A small black -> red -> yellow ramp, so no plotting library is needed.
    color = np.stack([np.clip(3 * heat, 0, 1), np.clip(3 * heat - 1, 0, 1), np.clip(3 * heat - 2, 0, 1)], -1)
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    weight = alpha * heat[..., None]
    out = base * (1 - weight) + color * weight
    return Image.fromarray((out * 255).round().astype(np.uint8))
