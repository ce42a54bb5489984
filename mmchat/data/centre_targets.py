"""Per-patch object-centre labels for a rendered scene: the targets of the centre loss (`mmchat.centres`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .shapes import COLORS, SHAPES, SIZES, ShapeObject

IGNORE_INDEX = -100
# Class 0: no object centre in this patch; then one class per (colour, shape, size).
KINDS: tuple[tuple[str, str, str], ...] = tuple((c, s, z) for c in COLORS for s in SHAPES for z in SIZES)
_KIND_INDEX = {kind: i + 1 for i, kind in enumerate(KINDS)}


def centre_targets(scenes: Sequence[Sequence[ShapeObject] | None], grid: int) -> torch.Tensor:
    """(B, grid*grid) class per patch, row-major; rows of images without a known scene are ignored.

    No two centres share a patch at the default grid (12 x 12): boxes of at least 12 % of the side
    that do not overlap have centres at least 12 % apart on one axis, more than a patch's 8.3 %.
    """
    targets = torch.full((len(scenes), grid * grid), IGNORE_INDEX, dtype=torch.long)
    for i, objects in enumerate(scenes):
        if objects is None:
            continue
        targets[i] = 0
        for o in objects:
            # The image is resized to the model's square input, so relative positions carry over.
            row = min(int(o.cy / o.image_side * grid), grid - 1)
            col = min(int(o.cx / o.image_side * grid), grid - 1)
            targets[i, row * grid + col] = _KIND_INDEX[(o.color, o.shape, o.size)]
    return targets
