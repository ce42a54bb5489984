"""ShapesVQA version 2: every form of the spec's table parses to its template; describe answers."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from mmchat.data.phrasing import parse, rephrase
from mmchat.data.shapes import ALL_FAMILIES, FAMILIES, QuestionSampler, ShapeObject, describe_sentence, sample_scene, write_dataset

# The spec's table, written out here by hand (not from mmchat.data.phrasing's own FORMS).
TABLE = [
    ("How many red circles are there?", ["How many red circles are in the image?", "How many red circles can you see?",
                                          "Count the red circles.", "What is the number of red circles?"]),
    ("Is there a small blue square?", ["Is there any small blue square?", "Do you see a small blue square?",
                                       "Can you see a small blue square?", "Does the image contain a small blue square?"]),
    ("What color is the large circle?", ["What is the color of the large circle?", "Which color is the large circle?",
                                         "What colour does the large circle have?"]),
    ("What shape is the red object?", ["What is the shape of the red object?", "Which shape is the red object?"]),
    ("What size is the red circle?", ["Is the red circle small or large?", "How big is the red circle?"]),
    ("Is the red circle to the left of the blue square?", ["Is the red circle left of the blue square?",
                                                            "Is the red circle on the left of the blue square?"]),
    ("Is the red circle to the right of the blue square?", ["Is the red circle right of the blue square?",
                                                             "Is the red circle on the right of the blue square?"]),
    ("Is the red circle above the blue square?", ["Is the red circle over the blue square?"]),
    ("Is the red circle below the blue square?", ["Is the red circle under the blue square?"]),
    ("Are there more circles than squares?", ["Are there more circles than there are squares?", "Do circles outnumber squares?"]),
    ("Describe the image.", ["What is in the image?", "What do you see?", "Describe the picture."]),
]


@pytest.mark.parametrize("template,forms", TABLE)
def test_every_form_of_the_table_reads_as_its_template(template: str, forms: list[str]) -> None:
    for form in [template, *forms]:
        for variant in (form, form.upper(), form.rstrip("?."), "  " + form.replace(" ", "   ") + " ", form.replace("color", "colour")):
            parsed = parse(variant, easy_vqa=False)
            assert parsed is not None, variant
            assert parsed.canonical == template, variant


def test_an_article_before_a_vowel_is_read_too() -> None:
    assert parse("Is there an orange square?").canonical == "Is there a orange square?"


@pytest.mark.parametrize(
    "question",
    ["Is there a cat?", "hello", "Write a poem.", "What time is it?", "What does the sign say?",
     "How many people are there?", "What color is the car?", "Is it raining?", "🙂🙂", "How many circels are there?"],
)
def test_questions_about_other_things_fit_no_family(question: str) -> None:
    assert parse(question) is None


def test_easy_vqa_questions_stay_word_for_word() -> None:
    for q in ("what is the blue shape?", "is there not a gray shape in the image?", "does the image contain a rectangle?"):
        assert parse(q).canonical == q
    assert parse("Is there a black shape").canonical == "is there a black shape?"


def test_rephrased_questions_keep_family_and_template() -> None:
    rng = random.Random(0)
    sampler = QuestionSampler(ALL_FAMILIES)
    forms = set()
    for _ in range(100):
        for q in sampler.questions(sample_scene(rng), rng, 5):
            text = rephrase(q["question"], rng)
            forms.add(text)
            parsed = parse(text, easy_vqa=False)
            assert parsed.family == q["question_type"]
            if q["question_type"] != "describe":
                assert parsed.canonical == q["question"]
    assert any(t != t.strip() or "  " in t for t in forms) and any("colour" in t for t in forms)


def test_description_names_every_object_left_to_right_each_on_its_own() -> None:
    objects = [
        ShapeObject("circle", "red", "small", 150, 40, 30),
        ShapeObject("square", "blue", "large", 30, 150, 60),
        ShapeObject("circle", "red", "small", 90, 120, 30),
    ]
    sentence = describe_sentence(objects)
    assert sentence == "There are 3 objects: a large blue square, a small red circle and a small red circle."
    assert describe_sentence(objects[:1]) == "There is 1 object: a small red circle."


def test_a_v2_set_with_descriptions_is_written(tmp_path: Path) -> None:
    write_dataset(tmp_path, 6, seed=3, questions_per_image=4, families=[*FAMILIES, "describe"], phrasing="v2")
    questions = json.loads((tmp_path / "questions.json").read_text())["questions"]
    annotations = json.loads((tmp_path / "annotations.json").read_text())["annotations"]
    described = [a for a in annotations if a["question_type"] == "describe"]
    assert described and all(re.match(r"There (is|are) \d objects?: ", a["multiple_choice_answer"]) for a in described)
    assert all(parse(q["question"]) is not None for q in questions)
    with pytest.raises(ValueError, match="phrasing"):
        write_dataset(tmp_path, 1, seed=3, phrasing="v3")
