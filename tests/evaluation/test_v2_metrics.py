"""Version 2 measures: unanswerable share, false declines, describe exact list and triple F1."""

from __future__ import annotations

from pathlib import Path

from mmchat.data.vqa import VQAExample
from mmchat.evaluation.v2_metrics import format_v2_scores, triples, v2_scores


def example(qid: int, answer: str, qtype: str = "count") -> VQAExample:
    return VQAExample(qid, qid, Path("x.png"), "q", [answer] * 10, answer, qtype, "other")


def test_triples_are_read_in_order() -> None:
    assert triples("There are 2 objects: a Small red circle and a small red circle.") == [
        ("small", "red", "circle"), ("small", "red", "circle")]


def test_declines_and_descriptions_are_scored() -> None:
    truth = "There are 2 objects: a large red circle and a small blue square."
    examples = [example(1, "2"), example(2, "yes"), example(3, "unanswerable"), example(4, "unanswerable"),
                example(5, truth, "describe"), example(6, truth, "describe")]
    predictions = [{"question_id": 1, "answer": "unanswerable"}, {"question_id": 2, "answer": "yes"},
                   {"question_id": 3, "answer": "unanswerable"}, {"question_id": 4, "answer": "no"},
                   {"question_id": 5, "answer": truth},
                   {"question_id": 6, "answer": "a small blue square and a large red circle and a large red circle"}]
    scores = v2_scores(predictions, examples)
    assert scores["unanswerable_share"] == 33.33
    assert scores["false_declines"] == 25.0 and scores["n_in_world"] == 4
    assert scores["declined_out_of_world"] == 50.0
    assert scores["describe_exact"] == 50.0
    # matched 2 + 2 of 2 + 3 predicted and 2 + 2 true: F1 = 2 * 4 / (5 + 4)
    assert scores["describe_f1"] == round(8 / 9, 4)
    text = format_v2_scores(scores)
    assert "false declines" in text and "exact list 50.00 %" in text
