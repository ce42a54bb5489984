"""Load data sets in the VQA v2 layout: ShapesVQA, converted easy-vqa, or real VQA v2.

A data folder holds `questions.json`, optionally `annotations.json` (test sets ship without
answers) and `captions.json`, and the images, found as `images/{image_id}.png|.jpg` or with COCO
names `COCO_{split}_{image_id:012d}.jpg` (in `images/` or the folder itself).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_COCO_NAME = re.compile(r"^COCO_.*_(\d{12})$")


@dataclass
class VQAExample:
    """One question; the answer fields are empty/None for a test set without annotations."""

    question_id: int
    image_id: int
    image_path: Path
    question: str
    answers: list[str]
    multiple_choice_answer: str | None
    question_type: str | None
    answer_type: str | None
    caption: str | None = None


def _find_json(data_dir: Path, name: str, keyword: str) -> Path | None:
    """`name` if present, else the single file whose name mentions `keyword` (real VQA naming)."""
    exact = data_dir / name
    if exact.is_file():
        return exact
    matches = sorted(data_dir.glob(f"*{keyword}*.json"))
    if len(matches) > 1:
        raise ValueError(f"several {keyword} files in {data_dir}: {[m.name for m in matches]}")
    return matches[0] if matches else None


def _image_index(data_dir: Path) -> dict[int, Path]:
    """image_id -> file, scanning `images/` then the folder itself; the first match wins."""
    index: dict[int, Path] = {}
    for folder in (data_dir / "images", data_dir):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            coco = _COCO_NAME.match(path.stem)
            if coco:
                image_id = int(coco.group(1))
            elif path.stem.isdigit():
                image_id = int(path.stem)
            else:
                continue
            index.setdefault(image_id, path)
    return index


def load_vqa(data_dir: str | Path) -> list[VQAExample]:
    """All questions of a VQA v2-layout folder, in `questions.json` order.

    Raises FileNotFoundError when the questions file or an image a question needs is missing.
    """
    root = Path(data_dir)
    questions_path = _find_json(root, "questions.json", "questions")
    if questions_path is None:
        raise FileNotFoundError(f"no questions.json in {root}")
    questions: list[dict[str, Any]] = json.loads(questions_path.read_text())["questions"]
    annotations_path = _find_json(root, "annotations.json", "annotations")
    annotations: dict[int, dict[str, Any]] = {}
    if annotations_path is not None:
        rows = json.loads(annotations_path.read_text())["annotations"]
        annotations = {row["question_id"]: row for row in rows}
    captions_path = root / "captions.json"
    captions: dict[int, str] = {}
    if captions_path.is_file():
        rows = json.loads(captions_path.read_text())["captions"]
        # VQA-style files may hold several captions per image; keep the first.
        for row in rows:
            captions.setdefault(row["image_id"], row["caption"])

    images = _image_index(root)
    missing = sorted({q["image_id"] for q in questions} - images.keys())
    if missing:
        raise FileNotFoundError(f"{len(missing)} images missing in {root}, e.g. image_id {missing[0]}")

    examples = []
    for q in questions:
        ann = annotations.get(q["question_id"], {})
        examples.append(
            VQAExample(
                question_id=q["question_id"],
                image_id=q["image_id"],
                image_path=images[q["image_id"]],
                question=q["question"],
                answers=[a["answer"] for a in ann.get("answers", [])],
                multiple_choice_answer=ann.get("multiple_choice_answer"),
                question_type=ann.get("question_type"),
                answer_type=ann.get("answer_type"),
                caption=captions.get(q["image_id"]),
            )
        )
    return examples
