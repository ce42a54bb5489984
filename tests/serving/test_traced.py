"""Traced forwards (`mmchat/serving/traced.py`): the same answers and heat-maps as eager ones, and
a graph that would compute something else is never used."""

from __future__ import annotations

import pytest
import torch
from test_scheduler import picture, tokens  # tests/serving is on pytest's sys.path
from torch import nn

from mmchat.serving.engine import ChatEngine, GenerationSettings, Turn
from mmchat.serving.row_buckets import _bucketed_linear, _traced_bucket, bucket
from mmchat.serving.traced import KINDS, LOOK, trace_checked

QUESTIONS = ["What color is the square?", "Is there a circle?", "How many shapes are there?", "Describe the image."]
GREEDY = GenerationSettings(max_new_tokens=8)


def conversation_replies(engine: ChatEngine, users: int = 6) -> list[list[tuple[list[int], torch.Tensor | None]]]:
    """Each user's turns (their tokens and their answers' recorded maps), every user's turn asked
    before any is answered, so that an engine without a thread of its own batches them alike each time."""
    images = [picture(100 + u) for u in range(users)]
    histories: list[list[Turn]] = [[] for _ in range(users)]
    out: list[list] = [[] for _ in range(users)]
    for turn in range(3):
        asked = [QUESTIONS[u % 2 + turn] for u in range(users)]
        replies = [engine.submit(images[u], asked[u], histories[u], GREEDY) for u in range(users)]
        for u, reply in enumerate(replies):
            ids = tokens(reply)
            answer = reply.text()
            out[u].append((ids, engine.answer_attention(images[u], asked[u], answer, histories[u])))
            histories[u].append(Turn(asked[u], answer))
    return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_traced_engine_answers_and_looks_as_the_eager_one(tiny_checkpoint, dtype):
    """Six users' three-turn conversations at once: every token and every heat-map weight the same."""
    eager = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype=dtype, threaded=False)
    traced = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype=dtype, threaded=False)
    seen: list[tuple[int, int]] = []
    traced.trace(done=lambda kept, tried, seconds: seen.append((kept, tried)))
    # bf16 on a CPU keeps an fp32 copy for small forwards: each model's recorded kinds and a second
    # look's unrecorded prompt (this engine records), and the encoder.
    recorded = [kind for kind in KINDS if kind[0]] + [LOOK]
    tried = 1 + len(recorded) * (1 + (traced.adapter.small_model is not None))
    assert seen == [(tried, tried)]
    try:
        a, b = conversation_replies(eager), conversation_replies(traced)
        assert [[ids for ids, _ in user] for user in a] == [[ids for ids, _ in user] for user in b]
        for user_a, user_b in zip(a, b):
            for (_, maps_a), (_, maps_b) in zip(user_a, user_b):
                assert torch.equal(maps_a, maps_b)
    finally:
        eager.close()
        traced.close()


def test_an_engine_that_records_no_heat_map_traces_those_forwards_too(tiny_checkpoint):
    engines = [
        ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", threaded=False, record_attention=False) for _ in range(2)
    ]
    seen: list[tuple[int, int]] = []
    engines[1].trace(done=lambda kept, tried, seconds: seen.append((kept, tried)))
    tried = 1 + len(KINDS) * (1 + (engines[1].adapter.small_model is not None))
    try:
        assert seen == [(tried, tried)]
        a, b = (conversation_replies(engine) for engine in engines)
        assert [[ids for ids, _ in user] for user in a] == [[ids for ids, _ in user] for user in b]
    finally:
        for engine in engines:
            engine.close()


def test_tracing_beside_serving_changes_no_answer(tiny_checkpoint):
    """The app traces on a thread of its own while it answers: the answers are the eager ones throughout."""
    eager = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", threaded=False)
    expected = conversation_replies(eager, users=3)
    eager.close()
    engine = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", threaded=False)
    thread = engine.trace(wait=False)
    try:
        during = conversation_replies(engine, users=3)
        thread.join(timeout=120)
        assert not thread.is_alive()
        after = conversation_replies(engine, users=3)
        for got in (during, after):
            assert [[ids for ids, _ in user] for user in got] == [[ids for ids, _ in user] for user in expected]
    finally:
        engine.close()


class _ByValue(nn.Module):
    """Takes a branch on a value: a trace fixes the branch of its example."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x * 2 if x.sum() > 0 else x - 1,)


class _BySize(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.reshape(x.shape[0], -1).sum(1),)


def test_a_graph_that_computes_otherwise_at_other_sizes_is_not_kept():
    positive, negative = torch.ones(2, 3), torch.full((3, 3), -3.0)
    assert trace_checked(_ByValue(), (positive,), [(negative,)]) is None
    graph = trace_checked(_BySize(), (positive,), [(torch.randn(5, 2, 2),)])
    assert graph is not None
    x = torch.randn(7, 4, 3)
    assert torch.equal(graph(x)[0], x.reshape(7, -1).sum(1))


def test_padded_rows_in_a_trace_are_the_buckets_and_outputs_of_eager_ones():
    assert all(_traced_bucket(torch.tensor(rows)).item() == bucket(rows) for rows in range(1, 5000))

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(16, 8).to(torch.bfloat16)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (_bucketed_linear(self.layer, x),)

    padded = Padded()
    graph = trace_checked(padded, (torch.randn(3, 5, 16, dtype=torch.bfloat16),), [])
    with torch.inference_mode():
        for rows in (1, 16, 17, 300, 2049):
            x = torch.randn(rows, 1, 16, dtype=torch.bfloat16)
            assert torch.equal(graph(x)[0], _bucketed_linear(padded.layer, x))
