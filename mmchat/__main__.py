"""`python -m mmchat COMMAND [ARGS]` (or the `mmchat` console script): one entry for every tool.

    python -m mmchat train --out runs/x --preset shapes-small      # mmchat.training.train
    python -m mmchat evaluate --data DIR --predictions OUT.json    # mmchat.evaluation.evaluate
    python -m mmchat shapes --out data/shapes-test --images 300    # mmchat.data.shapes (ShapesVQA)
    python -m mmchat easy-vqa --out data/easy-vqa-test --split test
    python -m mmchat soup --out runs/soup MODEL MODEL ...          # mmchat.training.soup (weight mean)
    python -m mmchat count-probe MODEL | position-probe MODEL
    python -m mmchat card MODEL --results SCORES.json ...          # mmchat.evaluation.card (model-index)
    python -m mmchat publish model|space --repo-id ID [--dry-run DIR]  # mmchat.serving.publish (the hub)

`COMMAND --help` gives each one's options. Each module is imported only when its command runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "train": ("mmchat.training.train", "train a model (accelerate launch -m mmchat train ... for many processes)"),
    "evaluate": ("mmchat.evaluation.evaluate", "answer a VQA-layout folder and score it"),
    "shapes": ("mmchat.data.shapes", "write a ShapesVQA data set"),
    "easy-vqa": ("mmchat.data.easy_vqa", "convert the easy-vqa data set"),
    "out-of-world": ("mmchat.data.out_of_world", "write a set of images or questions outside the ShapesVQA world"),
    "soup": ("mmchat.training.soup", "average the weights of checkpoints fine-tuned from one start"),
    "train-gate": ("mmchat.training.gate", "train the world gate (which images are scenes of ShapesVQA)"),
    "count-probe": ("mmchat.evaluation.count_probe", "score counting by true count and object size"),
    "position-probe": ("mmchat.evaluation.position_probe", "how well the patches say where they lie"),
    "card": ("mmchat.evaluation.card", "write evaluation results into a model card's model-index"),
    "publish": ("mmchat.serving.publish", "upload a model folder or this project as a Space to the hub"),
}


def usage() -> str:
    lines = ["usage: python -m mmchat COMMAND [ARGS]   (COMMAND --help for its options)", "", "commands:"]
    return "\n".join(lines + [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"mmchat: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
