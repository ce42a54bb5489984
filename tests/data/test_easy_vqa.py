"""easy-vqa conversion: the whole test split (about 0.5 s) into the VQA v2 layout."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

easy_vqa = pytest.importorskip("easy_vqa")

from mmchat.data.easy_vqa import convert_easy_vqa  # noqa: E402
from mmchat.data.vqa import load_vqa  # noqa: E402


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("easy-vqa-test")
    return out, convert_easy_vqa(out, "test")


def test_counts_match_the_published_split(test_split: tuple[Path, int]) -> None:
    out, n = test_split
    assert n == 9673
    assert len(list((out / "images").glob("*.png"))) == 1000
    assert len(json.loads((out / "annotations.json").read_text())["annotations"]) == 9673
    assert len(easy_vqa.get_train_questions()[0]) == 38575  # train is not converted here: same code


def test_questions_answers_and_types(test_split: tuple[Path, int]) -> None:
    out, _ = test_split
    texts, answers, image_ids = easy_vqa.get_test_questions()
    examples = load_vqa(out)
    assert [e.question for e in examples] == texts
    assert [e.multiple_choice_answer for e in examples] == answers
    assert [e.image_id for e in examples] == image_ids
    ex = examples[0]
    assert ex.answers == [ex.multiple_choice_answer] * 10
    assert ex.image_path.read_bytes() == Path(easy_vqa.get_test_image_paths()[ex.image_id]).read_bytes()

    kinds = {(e.question_type, e.answer_type, e.multiple_choice_answer) for e in examples}
    assert {(q, a) for q, a, _ in kinds} == {("yes/no", "yes/no"), ("shape", "other"), ("color", "other")}
    assert {ans for q, _, ans in kinds if q == "shape"} == {"circle", "rectangle", "triangle"}
    assert {ans for q, _, ans in kinds if q == "yes/no"} == {"yes", "no"}
    assert len({ans for q, _, ans in kinds if q == "color"}) == 8
    assert sum(Counter(e.question_type for e in examples).values()) == 9673

    with Image.open(examples[0].image_path) as image:
        assert image.mode == "RGB" and image.size == (64, 64)


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        convert_easy_vqa(tmp_path, "val")
