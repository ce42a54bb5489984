"""Whole answers drafted into the prefill as a tree: the same answers and heat-maps, in fewer forwards."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image
from test_scheduler import QUESTIONS, picture

from mmchat.data.shapes import render_scene, sample_question, sample_scene
from mmchat.serving.answer_tree import LikelyAnswers, grow_tree, question_kind, tree_mask
from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.families import Turn

GREEDY = GenerationSettings(max_new_tokens=12)
EOS = {1}
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "mmchat-shapes"


def test_questions_are_grouped_by_their_first_two_words():
    assert question_kind("How many  circles are there?") == question_kind("how MANY squares?") == "how many"
    assert question_kind("Is the circle red?") != question_kind("What color is the circle?")


def test_answers_become_candidates_once_given_twice_most_common_first():
    likely = LikelyAnswers(min_count=2)
    for answer in ([5, 1], [5, 1], [5, 1], [6, 7, 1], [6, 7, 1], [8, 1]):
        likely.learn("how many", answer)
    assert likely.candidates("how many") == [((5, 1), 0.5), ((6, 7, 1), 2 / 6)]  # [8, 1] seen once
    assert likely.candidates("what color") == []


def test_the_table_keeps_its_newest_kinds_and_each_kinds_common_answers():
    likely = LikelyAnswers(min_count=1, max_kinds=3, max_answers=4)
    for kind in ("a", "b", "c", "d", "d", "d"):
        likely.learn(kind, [2, 1])
    assert likely.candidates("a") == [] and likely.candidates("d") == [((2, 1), 1.0)]
    for i in range(50):  # a description is rarely given twice: the table keeps the common answers
        likely.learn("d", [100 + i, 1])
    assert len(likely._answers["d"]) <= 8
    assert likely.candidates("d")[0][0] == (2, 1)
    likely.learn("d", list(range(2, 40)) + [1])  # longer than any tree: not kept
    assert all(len(answer) <= likely.max_tokens for answer, _ in likely.candidates("d"))


def test_a_tree_shares_prefixes_and_walks_only_where_the_model_agrees():
    # "p urple", "p ink", "blue": 4 nodes; an answer cut by the token limit (no end token) is left out.
    candidates = [((10, 11, 1), 0.4), ((10, 12, 1), 0.3), ((20, 1), 0.2), ((30, 31, 32), 0.1)]
    tree = grow_tree(candidates, EOS, max_nodes=8, max_depth=4)
    assert tree.tokens == [10, 11, 12, 20] and tree.parents == [-1, 0, 0, -1] and tree.depths == [0, 1, 1, 0]
    assert abs(tree.covered - 0.9) < 1e-9
    assert grow_tree(candidates, EOS, max_nodes=2, max_depth=4).tokens == [10, 11]  # the most common first
    assert grow_tree(candidates, EOS, max_nodes=8, max_depth=1).tokens == [20]  # "p urple" is 2 deep
    # The model's choice at each node: after 10 it says 12, after 12 the end, after 11 / 20 something else.
    choices = {0: 12, 1: 40, 2: 1, 3: 41}
    order = [choices[i] for i in range(4)]
    assert tree.walk(10, order, EOS) == ([10, 12, 1], [0, 2])  # "p ink <end>" in one forward
    assert tree.walk(20, order, EOS) == ([20, 41], [3])  # agrees on "blue", then goes on its own way
    assert tree.walk(50, order, EOS) == ([50], [])  # a first token the tree does not hold
    seen = tree.attends()
    assert seen[2].tolist() == [True, False, True, False]  # "ink" sees "p" and itself, not "urple"


def test_the_mask_lets_each_node_see_the_prompt_and_its_ancestors_only():
    tree = grow_tree([((10, 11, 1), 0.5), ((20, 1), 0.5)], EOS, max_nodes=8, max_depth=4)
    # Row 0: 1 cached column, then a 2-token prompt and its 3 nodes. Row 1: a 3-token prompt after padding.
    mask = torch.tensor([[1, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]])
    allowed = tree_mask(mask, new=6, trees=[tree, None])[:, 0]  # (B, T, L)
    assert allowed.shape == (2, 6, 7)
    assert allowed[0, 2].tolist() == [True, False, True, True, False, False, False]  # the prompt's last
    assert allowed[0, 3].tolist() == [True, False, True, True, True, False, False]  # node 10
    assert allowed[0, 4].tolist() == [True, False, True, True, True, True, False]  # node 11, after 10
    assert allowed[0, 5].tolist() == [True, False, True, True, False, False, True]  # node 20: not 10, 11
    assert allowed[1, 5].tolist() == [False, False, False, False, True, True, True]  # plain causal
    assert allowed[1, 0].tolist() == [False, True, False, False, False, False, False]  # padding sees itself


def engine_with(checkpoint: str, draft_tokens: int) -> ChatEngine:
    # fp32: the answers and maps are compared token for token (see test_scheduler.py)
    return ChatEngine.from_pretrained(checkpoint, device="cpu", dtype="float32", draft_tokens=draft_tokens)


def test_a_tree_the_model_leaves_midway_changes_no_answer_nor_the_turn_after_it(tiny_checkpoint):
    """The tiny random model never ends an answer, so the trees here are the model's own first tokens
    then a wrong end, beside wrong branches: the row keeps the nodes the model chose, then decodes on."""
    image, question = picture(80), QUESTIONS[0]
    plain = engine_with(tiny_checkpoint, draft_tokens=0)
    reply = plain.submit(image, question, [], GREEDY)
    first = reply.text()
    true = reply.tokens
    weights = plain.answer_attention(image, question, first)
    follow = plain.answer(image, QUESTIONS[1], [Turn(question, first)], GREEDY)
    plain.close()

    engine = engine_with(tiny_checkpoint, draft_tokens=4)
    for _ in range(3):  # fitted costs, so that trees are weighed at all
        engine.answer(picture(81), QUESTIONS[2], [], GREEDY)
    engine.release(picture(81))
    likely, kind = engine.scheduler.likely, question_kind(question)
    for answer in ([*true[:3], 1], [true[0], (true[1] + 7) % 300 + 2, 1], [(true[0] + 5) % 300 + 2, 1]):
        for _ in range(3):
            likely.learn(kind, answer)
    engine.scheduler.cost.fit = lambda: (0.010, 0.0001)  # a lone user's forward: its fixed cost rules
    assert engine.answer(image, question, [], GREEDY) == first
    s = engine.scheduler
    assert s.trees == 1 and s.tree_nodes == 5 and s.tree_answers == 0  # fed, and left after 3 nodes
    assert torch.allclose(engine.answer_attention(image, question, first), weights, atol=1e-5)
    assert engine.answer(image, QUESTIONS[1], [Turn(question, first)], GREEDY) == follow
    assert s.prefixes.entries.hits >= 1  # from the keys/values the refused nodes were masked out of
    engine.close()


def scenes(n: int, seed: int) -> list[tuple[Image.Image, str]]:
    """n ShapesVQA scenes, one question each."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        objects = sample_scene(rng)
        image, q = render_scene(objects, rng), sample_question(objects, rng)
        if q:
            out.append((image, q["question"]))
    return out


def test_the_shipped_models_short_answers_end_in_their_prefill_as_plain_decoding_gives_them():
    asks = scenes(24, seed=3)
    plain = engine_with(str(SHIPPED), draft_tokens=0)
    expected = [(a := plain.answer(image, q, [], GREEDY), plain.answer_attention(image, q, a)) for image, q in asks]
    plain_steps = plain.scheduler.steps  # at least one decode step an answer, to see its end
    plain.close()
    engine = engine_with(str(SHIPPED), draft_tokens=4)
    for image, q in scenes(48, seed=4):  # answers it learns from: other scenes, the same kinds of question
        engine.answer(image, q, [], GREEDY)
    s = engine.scheduler
    steps, ended = s.steps, s.tree_answers
    got = [(a := engine.answer(image, q, [], GREEDY), engine.answer_attention(image, q, a)) for image, q in asks]
    assert [a for a, _ in got] == [a for a, _ in expected]
    for (_, w), (_, v) in zip(got, expected):
        assert torch.allclose(w, v, atol=1e-5)
    assert s.tree_answers - ended >= 16  # most of the 24 ended in their prefill ...
    assert plain_steps >= 24 and s.steps - steps <= plain_steps / 2  # ... so few decode steps were left
    engine.close()
