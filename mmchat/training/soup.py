"""A model soup: the mean of the weights of checkpoints fine-tuned from one start (Wortsman et al.,
arXiv:2203.05482). No training; the first folder gives everything but the weights (config,
processor, tokenizer, world gate), so the soup loads and answers as that checkpoint does.

    python -m mmchat soup --out runs/soup models/mmchat-shapes runs/stage25/final
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def mean_weights(folders: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The mean of each tensor over the folders' `model.safetensors`, in fp32, cast back to the first's dtype."""
    states = [load_file(Path(folder) / WEIGHTS) for folder in folders]
    first = states[0]
    for folder, state in zip(folders[1:], states[1:]):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise ValueError(f"{folder} does not hold the same tensors as {folders[0]}: only one model's fine-tunes average")
    return {
        name: torch.stack([state[name].float() for state in states]).mean(0).to(tensor.dtype)
        if tensor.is_floating_point()
        else tensor
        for name, tensor in first.items()
    }


def make_soup(folders: Sequence[Path], out: Path) -> Path:
    if len(folders) < 2:
        raise ValueError("a soup needs at least two checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    for path in Path(folders[0]).iterdir():  # everything but the weights, from the first
        if path.is_file() and path.name != WEIGHTS:
            shutil.copy2(path, out / path.name)
    save_file(mean_weights(folders), out / WEIGHTS, metadata={"format": "pt"})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmchat soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="checkpoint folders; the first gives all but the weights")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(make_soup(args.folders, args.out))
    return 0
