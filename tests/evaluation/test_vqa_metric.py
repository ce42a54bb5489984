"""Official VQA accuracy: normalisation and leave-one-out scoring, on hand-worked cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmchat.data.vqa import VQAExample
from mmchat.evaluation.vqa_metric import CONTRACTIONS, normalize_answer, score_predictions, vqa_accuracy


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("yes.", "yes"),  # a period not followed by a digit is dropped
        ("Yes", "yes"),
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("the cat", "cat"),  # articles are dropped
        ("a red  ball\n", "red ball"),  # whitespace collapses, newline and tab become spaces
        ("an\tapple", "apple"),
        ("dont", "don't"),  # the contractions table
        ("isnt", "isn't"),
        ("3,000", "3000"),  # a digit,digit comma is removed outright
        ("red, white", "red white"),  # a mark next to a space is removed...
        ("red,white", "red white"),  # ...otherwise it becomes a space
        ("2.5", "2.5"),  # decimal points stay
        ("what?!", "what"),
        ("don't", "don't"),  # the apostrophe is not in the official punctuation list
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_contractions_table_is_the_official_one() -> None:
    # Spot checks across the table, including its odd official entries.
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["somebody'd"] == "somebodyd"
    assert CONTRACTIONS["yall'd've"] == "y'all'd've"
    assert CONTRACTIONS["Im"] == "I'm"  # capitalised keys never match lower-cased answers
    assert normalize_answer("Im") == "im"


def test_number_word_matches_ten_digit_answers() -> None:
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0


def test_partial_agreement_follows_leave_one_out() -> None:
    # 2 of 10 humans said "blue". Leaving out one of those 2 leaves 1 match: min(1/3, 1) = 1/3;
    # leaving out one of the 8 others leaves 2 matches: 2/3. Mean: (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    answers = ["blue"] * 2 + ["green"] * 8
    assert vqa_accuracy("blue", answers) == pytest.approx(0.6)
    # 1 of 10: leaving it out gives 0, the 9 other subsets give 1/3: 9 / 30 = 0.3.
    assert vqa_accuracy("blue", ["blue"] + ["green"] * 9) == pytest.approx(0.3)
    # 3 of 10: (3 * 2/3 + 7 * 1) / 10 = 0.9; from 4 matches on every subset has 3: 1.0.
    assert vqa_accuracy("blue", ["blue"] * 3 + ["green"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("blue", ["blue"] * 4 + ["green"] * 6) == 1.0
    assert vqa_accuracy("red", answers) == 0.0


def test_ground_truth_is_only_punctuation_processed_when_humans_disagree() -> None:
    # Official behaviour: unanimous answers are compared as stored (VQA stores them normalised).
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes."] * 5 + ["no"] * 5) == 1.0


def test_single_answer_counts_as_ten_and_empty_is_an_error() -> None:
    assert vqa_accuracy("circle", ["circle"]) == 1.0
    assert vqa_accuracy("square", ["circle"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("circle", [])


def _example(qid: int, answer: str | None, qtype: str, atype: str) -> VQAExample:
    answers = [] if answer is None else [answer] * 10
    return VQAExample(qid, qid, Path(f"{qid}.png"), "q?", answers, answer, qtype, atype)


def test_score_predictions_per_type() -> None:
    examples = [
        _example(1, "yes", "exist", "yes/no"),
        _example(2, "no", "exist", "yes/no"),
        _example(3, "2", "count", "number"),
        _example(4, "red", "query_color", "other"),
        _example(5, None, "", ""),  # a test question without answers is not scored
    ]
    predictions = [
        {"question_id": 1, "answer": "Yes."},
        {"question_id": 2, "answer": "yes"},
        {"question_id": 3, "answer": "two"},
        {"question_id": 5, "answer": "anything"},
    ]  # question 4 has no prediction: scored as wrong
    scores = score_predictions(predictions, examples)
    assert scores["n"] == 4 and scores["missing"] == 1
    assert scores["overall"] == 50.0
    assert scores["per_question_type"] == {"count": 100.0, "exist": 50.0, "query_color": 0.0}
    assert scores["per_answer_type"] == {"number": 100.0, "other": 0.0, "yes/no": 50.0}
    as_dict = {p["question_id"]: p["answer"] for p in predictions}
    assert score_predictions(as_dict, examples) == scores


def test_score_predictions_rounds_like_the_official_script() -> None:
    examples = [_example(i, "a1", "t", "other") for i in range(3)]
    scores = score_predictions({0: "a1"}, examples)
    assert scores["overall"] == 33.33
