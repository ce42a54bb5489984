"""Render the app's example images and write `examples.json` (image file + question) beside them.

    python assets/make_examples.py

Shape scenes come from the ShapesVQA renderer the model is trained on, so the examples look like
its training data and the questions are ones it was taught; fixed seeds keep the files stable.
One real photo (gradio's cheetah) shows what the model does with an image unlike its training data.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
sys.path.insert(0, str(ASSETS.parent))  # run as a script from anywhere: make `mmchat` importable

from mmchat.data.shapes import render_scene, sample_question, sample_scene  # noqa: E402

SIDE = 224
# (file, scene seed, question family): seeds picked by eye for scenes of 2-5 objects.
SCENES = [
    ("shapes-1.png", 7, "query_color"),
    ("shapes-2.png", 5, "count"),
    ("shapes-3.png", 1, "exist"),
]
PHOTO = ("cheetah.jpg", "What color is the animal?")


def gradio_photo(name: str) -> Path:
    """A photo shipped inside the installed gradio package (`gradio/media_assets/images/`)."""
    import gradio

    return Path(gradio.__file__).resolve().parent / "media_assets" / "images" / name


def main() -> None:
    examples = []
    for name, seed, family in SCENES:
        rng = random.Random(seed)
        objects = sample_scene(rng, SIDE)
        question = sample_question(objects, random.Random(seed), family)
        if question is None:
            raise RuntimeError(f"seed {seed} cannot be asked a {family} question; pick another seed")
        render_scene(objects, rng, SIDE).save(ASSETS / name)
        # The true answer, so tests can check that the shipped model answers the examples right.
        examples.append({"file": name, "question": question["question"], "answer": question["answer"]})
    shutil.copyfile(gradio_photo(PHOTO[0]), ASSETS / PHOTO[0])
    examples.append({"file": PHOTO[0], "question": PHOTO[1]})
    (ASSETS / "examples.json").write_text(json.dumps(examples, indent=2) + "\n")
    for example in examples:
        print(f"{example['file']}: {example['question']} {example.get('answer', '')}".rstrip())


if __name__ == "__main__":
    main()
