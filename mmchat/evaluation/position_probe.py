"""Can a patch's place be read from the features cross-attention sees? A linear probe.

Encodes ShapesVQA scenes with a checkpoint, fits a least-squares map from each projected patch
(`encode_images`, after the position code if the model has one) to its (row, col) in the patch
grid on three quarters of the scenes, and prints the mean absolute error on the rest, in patches.
Guessing the grid's centre errs by about a quarter of the side (3 patches of 12).

    python -m mmchat position-probe models/mmchat-shapes
"""

from __future__ import annotations

import argparse
import math
import random

import torch

from ..data.shapes import render_scene, sample_scene
from ..modeling.modeling_mmchat import MMChatForConditionalGeneration
from ..modeling.processing_mmchat import MMChatProcessor

PROG = "python -m mmchat position-probe"


def probe_error(
    model: MMChatForConditionalGeneration, processor: MMChatProcessor, scenes: int = 160, seed: int = 1
) -> tuple[float, float, int]:
    """Held-out mean absolute error of the probe in (rows, columns), and the grid's side."""
    rng = random.Random(seed)
    features, places = [], []
    for _ in range(scenes):
        image = render_scene(sample_scene(rng, 224), rng, 224)
        pixels = processor.pixel_values(image)["pixel_values"]
        with torch.no_grad():
            patches = model.encode_images(pixels).image_states[0].float()  # (N, D)
        side = math.isqrt(patches.shape[0])
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        features.append(patches[-side * side :])  # a ViT's CLS token first: dropped
        places.append(torch.stack([rows.flatten(), cols.flatten()], 1).float())
    x = torch.cat(features)
    x = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    y = torch.cat(places).double()
    n = len(x) * 3 // 4
    fit = torch.linalg.lstsq(x[:n], y[:n], driver="gelsd").solution
    error = (x[n:] @ fit - y[n:]).abs().mean(0)
    return error[0].item(), error[1].item(), side


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--scenes", type=int, default=160)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    model = MMChatForConditionalGeneration.from_pretrained(args.model).eval()
    rows, cols, side = probe_error(model, MMChatProcessor.from_pretrained(args.model), args.scenes, args.seed)
    # Guessing the centre of a side x side grid errs by a quarter of the side on each axis.
    centre = sum(abs(i - (side - 1) / 2) for i in range(side)) / side
    print(f"{side} x {side} patches; held-out mean error, rows {rows:.2f}, columns {cols:.2f} "
          f"(guessing the centre: {centre:.2f})")


if __name__ == "__main__":
    main()
