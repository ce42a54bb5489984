"""Speculative decoding from the engine's earlier answers: fewer forwards, the same answers."""

from __future__ import annotations

import torch
from test_scheduler import QUESTIONS, picture

from mmchat.serving.drafts import AnswerNgrams
from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.families import Turn

GREEDY = GenerationSettings(max_new_tokens=12)
EOS = {1}


def engine_with(tiny_checkpoint: str, draft_tokens: int) -> ChatEngine:
    # fp32: the answers are compared token for token (see test_scheduler.py)
    return ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32", draft_tokens=draft_tokens)


def test_drafts_follow_what_came_after_often_enough():
    table = AnswerNgrams(min_count=2, min_share=0.9)
    circle, square = [7, 20, 21, 1], [8, 30, 1]  # "c ir cle <eos>", "s quare <eos>"
    table.learn(circle)
    assert table.draft([7], limit=4, stop=EOS) == []  # seen once: not yet
    table.learn(circle)
    table.learn(square)
    table.learn(square)
    assert table.draft([7], limit=4, stop=EOS) == [20, 21]  # up to the end token, never it
    assert table.draft([7], limit=1, stop=EOS) == [20]
    assert table.draft([8], limit=4, stop=EOS) == [30]
    assert table.draft([9], limit=4, stop=EOS) == []  # never seen
    # After the same token two continuations, each half the time: no guess.
    table.learn([7, 22, 1])
    table.learn([7, 22, 1])
    assert table.draft([7], limit=4, stop=EOS) == []
    # The longest context known decides: 20 at an answer's start is not 20 after 7.
    table.learn([20, 5, 1])
    table.learn([20, 5, 1])
    assert table.draft([20], limit=4, stop=EOS) == [5]
    assert table.draft([7, 20], limit=4, stop=EOS) == [21]  # after "c ir", "cle"
    assert table.draft([8, 20], limit=4, stop=EOS) == []  # (8, 20) unseen, and after 20 alone: 21 or 5


def test_the_table_keeps_at_most_its_contexts():
    table = AnswerNgrams(max_contexts=50)
    for i in range(100):
        table.learn([100 + i, 200 + i, 1])
    assert len(table._next) <= 50
    table.learn([5, 6, 1])
    table.learn([5, 6, 1])
    assert table.draft([5], limit=2, stop=EOS) == [6]  # the newest are kept


def answers(engine: ChatEngine, asks: list[tuple[int, str]], rounds: int) -> list[tuple[str, torch.Tensor]]:
    """Each (picture seed, question) answered `rounds` times, with its recorded heat-map weights."""
    out = []
    for _ in range(rounds):
        for seed, question in asks:
            image = picture(seed)
            answer = engine.answer(image, question, [], GREEDY)
            out.append((answer, engine.answer_attention(image, question, answer)))
    return out


def test_drafted_answers_and_heat_maps_equal_plain_ones_in_fewer_steps(tiny_checkpoint):
    asks = [(60 + i, q) for i, q in enumerate(QUESTIONS[:4])]
    plain = engine_with(tiny_checkpoint, draft_tokens=0)
    expected = answers(plain, asks, rounds=3)
    plain_steps = plain.scheduler.steps
    plain.close()
    engine = engine_with(tiny_checkpoint, draft_tokens=4)
    got = answers(engine, asks, rounds=3)
    assert [a for a, _ in got] == [a for a, _ in expected]
    for (_, w), (_, v) in zip(got, expected):
        assert torch.allclose(w, v, atol=1e-5)
    s = engine.scheduler
    assert s.accepted > 0  # the third round's answers were drafted from the first two
    assert s.steps < plain_steps
    engine.close()


def test_tokens_kept_in_one_step_are_shown_at_once(tiny_checkpoint):
    """Each text the stream yields is an event the app sends: a step that keeps drafted tokens
    shows them together. Inline engines, so that each wait for a token runs exactly one step."""
    image, question = picture(72), QUESTIONS[3]
    shown = {}
    for draft_tokens in (0, 4):
        engine = ChatEngine.from_pretrained(
            tiny_checkpoint, device="cpu", dtype="float32", draft_tokens=draft_tokens, threaded=False
        )
        for _ in range(2):  # learnt twice: drafted from now on
            engine.answer(image, question, [], GREEDY)
        reply = engine.submit(image, question, [], GREEDY)
        shown[draft_tokens] = list(reply)
        engine.close()
    assert shown[4][-1] == shown[0][-1]  # the same answer
    assert len(shown[0]) >= 3 and len(shown[4]) < len(shown[0])


def test_a_wrong_draft_changes_no_answer_nor_the_turn_after_it(tiny_checkpoint):
    """Drafted tokens the model does not choose are masked out of the keys/values, so neither this
    answer nor the next turn, which starts from this turn's cached keys/values, sees them."""
    image, question = picture(70), QUESTIONS[0]
    plain = engine_with(tiny_checkpoint, draft_tokens=0)
    first = plain.answer(image, question, [], GREEDY)
    reply = plain.submit(image, question, [], GREEDY)
    reply.text()
    true_tokens = reply.tokens
    follow = plain.answer(image, QUESTIONS[1], [Turn(question, first)], GREEDY)
    plain.close()

    engine = engine_with(tiny_checkpoint, draft_tokens=4)
    wrong = [true_tokens[0], *[(t + 1) % 300 + 2 for t in true_tokens[1:3]], 1]  # right first token, then wrong
    for _ in range(3):
        engine.scheduler.drafts.learn(wrong)
    assert engine.answer(image, question, [], GREEDY) == first
    assert engine.scheduler.drafted > engine.scheduler.accepted  # drafts were fed, and refused
    assert engine.answer(image, QUESTIONS[1], [Turn(question, first)], GREEDY) == follow
    assert engine.scheduler.prefixes.entries.hits >= 1  # from the keys/values the wrong draft passed through
    engine.close()


def test_sampling_rows_are_never_drafted(tiny_checkpoint):
    engine = engine_with(tiny_checkpoint, draft_tokens=4)
    image, question = picture(71), QUESTIONS[2]
    for _ in range(3):
        engine.answer(image, question, [], GREEDY)  # learnt: greedy rows would now be drafted
    drafted = engine.scheduler.drafted
    sampling = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=0.7, top_p=0.9)
    engine.answer(image, question, [], sampling)
    assert engine.scheduler.drafted == drafted
    engine.close()
