"""The count probe: which objects a count question counts, and how its answers are tallied."""

from __future__ import annotations

from mmchat.data.shapes import ShapeObject
from mmchat.evaluation.count_probe import count_probe, counted


class AlwaysOne:
    """An engine that answers "1" to everything: the tallies can be worked out by hand."""

    def answer_batch(self, images, questions, settings):
        return ["1"] * len(questions)


def test_a_count_question_counts_the_objects_of_its_colour_and_shape():
    objects = [ShapeObject("circle", "red", "large", 50, 50, 60), ShapeObject("circle", "blue", "small", 150, 150, 30),
               ShapeObject("square", "red", "small", 150, 50, 30)]
    assert counted(objects, "How many objects are there?") == objects
    assert counted(objects, "How many circles are there?") == objects[:2]
    assert counted(objects, "How many red objects are there?") == [objects[0], objects[2]]
    assert counted(objects, "How many red squares are there?") == [objects[2]]
    assert counted(objects, "How many green triangles are there?") == []


def test_the_probe_scores_by_true_count_and_by_large_objects_counted():
    result = count_probe(AlwaysOne(), scenes=40, seed=3)
    assert result["n"] == 80
    assert result["by_count"][1][0] == 100.0
    assert all(acc == 0.0 for count, (acc, _) in result["by_count"].items() if count != 1)
    assert 0 not in result["by_count"] or result["over"] > 0  # "1" for a true 0 counts too many
    right = result["by_count"][1][1]
    assert abs(result["overall"] - 100 * right / 80) < 1e-9
    assert sum(n for _, n in result["by_large"].values()) == 80 - result["by_count"].get(0, (0, 0))[1]
