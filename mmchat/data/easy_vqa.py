"""Convert the public easy-vqa data set (PyPI `easy-vqa`) to the VQA v2 layout.

    python -m mmchat easy-vqa --out data/easy-vqa-test --split test

easy-vqa has 64x64 images of one shape and 13 answers (3 shapes, 8 colours, yes/no); it gives a
second, independently made test of the same skills as ShapesVQA. Image ids are kept; question ids
are the question's index in its split.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_SHAPES = frozenset({"circle", "rectangle", "triangle"})
_YES_NO = frozenset({"yes", "no"})


def _question_type(answer: str) -> str:
    # easy-vqa stores no question types; its answers tell the three kinds apart unambiguously.
    if answer in _YES_NO:
        return "yes/no"
    return "shape" if answer in _SHAPES else "color"


def convert_easy_vqa(out_dir: str | Path, split: str) -> int:
    """Write `split` ("train" or "test") to `out_dir`; returns the number of questions."""
    # Imported here so the rest of mmchat.data works without the optional package.
    import easy_vqa

    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        image_paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        texts, answers, image_ids = easy_vqa.get_test_questions()
        image_paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for image_id in sorted(set(image_ids)):
        shutil.copyfile(image_paths[image_id], out / "images" / f"{image_id}.png")

    questions: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for question_id, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids, strict=True)):
        # easy-vqa questions are lower case ("what color is the shape?"); keep them as published.
        questions.append({"image_id": image_id, "question_id": question_id, "question": text})
        annotations.append(
            {
                "image_id": image_id,
                "question_id": question_id,
                "question_type": _question_type(answer),
                "answer_type": "yes/no" if answer in _YES_NO else "other",
                "multiple_choice_answer": answer,
                "answers": [{"answer": answer, "answer_id": i} for i in range(1, 11)],
            }
        )
    (out / "questions.json").write_text(json.dumps({"questions": questions}))
    (out / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    return len(questions)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m mmchat easy-vqa", description="Convert easy-vqa to the VQA v2 layout."
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", choices=("train", "test"), required=True)
    args = parser.parse_args(argv)
    n = convert_easy_vqa(args.out, args.split)
    print(f"wrote {n} {args.split} questions to {args.out}")


if __name__ == "__main__":
    main()
