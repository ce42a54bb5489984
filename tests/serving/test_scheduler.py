"""The batching engine: many requests share forward passes and each gets what it would get alone."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.families import Turn
from mmchat.serving.overlay import overlay_attention

GREEDY = GenerationSettings(max_new_tokens=12)
QUESTIONS = [
    "What color is the square?",
    "How many objects are there?",
    "Is there a blue circle?",
    "What shape is left of the disc?",
    "Which color is the big object?",
    "Are there two squares?",
]


def picture(seed: int, side: int = 64) -> Image.Image:
    """A distinct synthetic picture per seed: a coloured block and disc on a grey ground."""
    rng = np.random.default_rng(seed)
    a = np.full((side, side, 3), rng.integers(150, 230), np.uint8)
    y, x = rng.integers(4, side // 2, size=2)
    a[y : y + 16, x : x + 16] = rng.integers(0, 255, size=3)
    yy, xx = np.mgrid[:side, :side]
    a[(yy - side + 20) ** 2 + (xx - side + 20) ** 2 < 80] = rng.integers(0, 255, size=3)
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: str) -> ChatEngine:
    # fp32: these tests check the batching token for token; bf16 rounding moves with a batch's shape,
    # and a random model's near-ties would follow it.
    engine = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    yield engine
    engine.close()


def fresh(tiny_checkpoint: str, **kwargs) -> ChatEngine:
    return ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32", **kwargs)


def tokens(reply) -> list[int]:
    """Every token of a reply, once it has ended."""
    reply.text()
    return reply.tokens


def vit_counter(engine: ChatEngine) -> list[int]:
    """Counts the images the vision encoder reads."""
    seen = [0]
    engine.adapter.model.vision_model.register_forward_hook(lambda m, i, o: seen.__setitem__(0, seen[0] + len(o[0])))
    return seen


def test_batched_greedy_answers_equal_single_answers_token_for_token(tiny_checkpoint):
    images = [picture(i) for i in range(len(QUESTIONS))]
    alone = fresh(tiny_checkpoint, image_cache_bytes=0, prefix_cache_bytes=0)
    single = []
    for image, question in zip(images, QUESTIONS):
        reply = alone.submit(image, question, [], GREEDY)
        single.append((reply.text(), reply.tokens))
    alone.close()

    engine = fresh(tiny_checkpoint)
    # Two waves: the second joins while the first is decoding (max tokens differ, so rows leave apart).
    first = [engine.submit(images[i], QUESTIONS[i], [], GREEDY) for i in range(3)]
    time.sleep(0.05)
    second = [engine.submit(images[i], QUESTIONS[i], [], GREEDY) for i in range(3, len(QUESTIONS))]
    batched = [(reply.text(), reply.tokens) for reply in first + second]
    assert batched == single
    assert engine.scheduler.steps < sum(len(tokens) for _, tokens in single)  # rows did share steps
    engine.close()


@pytest.mark.parametrize("apart", [False, True], ids=["mixed", "apart"])
def test_newcomers_join_a_running_batch_and_answer_as_alone(tiny_checkpoint, apart):
    """A request arriving while others decode has its prompt run in the same forward as their next
    tokens (a mixed step) or in one of its own (where the fitted cost says that is cheaper), and
    every answer, the running ones' and the newcomers', is unchanged either way."""
    long = GenerationSettings(max_new_tokens=30)
    images = [picture(40 + i) for i in range(5)]
    questions = QUESTIONS[:5]
    alone = fresh(tiny_checkpoint, image_cache_bytes=0, prefix_cache_bytes=0)
    single = [tokens(alone.submit(im, q, [], long)) for im, q in zip(images, questions)]
    alone.close()
    engine = fresh(tiny_checkpoint)
    engine.scheduler.cost.cheaper_apart = lambda wasted: apart
    first = engine.submit(images[0], questions[0], [], long)
    stream = iter(first)
    next(stream)  # the first row is decoding now
    later = [engine.submit(im, q, [], long) for im, q in zip(images[1:], questions[1:])]
    for _ in stream:
        pass
    assert [first.tokens] + [tokens(r) for r in later] == single
    assert (engine.scheduler.split_steps if apart else engine.scheduler.mixed_steps) >= 1
    assert (engine.scheduler.mixed_steps if apart else engine.scheduler.split_steps) == 0
    engine.close()


def test_the_forward_cost_fit_tells_a_cpu_from_a_gpu():
    """Forwards whose time grows with their positions (a CPU) pay for a second forward sooner than
    padding; forwards of nearly fixed cost (a GPU) never do, and nothing is split before a fit."""
    from mmchat.serving.forward_cost import ForwardCost

    cpu, gpu = ForwardCost(), ForwardCost()
    assert not cpu.cheaper_apart(wasted=10_000)  # no forwards seen yet: mix
    for positions in (16, 208, 16, 64, 16, 208):
        cpu.add(positions, 0.010 + 0.00018 * positions)  # this machine: 12 ms decode, 47 ms prefill
        gpu.add(positions, 0.015 + 0.000001 * positions)
    fixed, per_position = cpu.fit()
    assert fixed == pytest.approx(0.010) and per_position == pytest.approx(0.00018)
    assert cpu.cheaper_apart(wasted=15 * 12) and not cpu.cheaper_apart(wasted=2 * 12)
    assert not gpu.cheaper_apart(wasted=15 * 12)


def test_per_request_settings_hold_inside_one_batch(engine):
    image = picture(1)
    short = GenerationSettings(max_new_tokens=2)
    sampled = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=2.0, top_p=1.0)
    # top-p this small keeps only the most likely token: sampling that must equal greedy decoding.
    narrow = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1e-6)
    expected = engine.submit(image, QUESTIONS[0], [], GREEDY)
    expected_tokens = (expected.text(), expected.tokens)
    replies = [engine.submit(image, QUESTIONS[0], [], s) for s in (GREEDY, short, sampled, narrow, sampled)]
    results = [(r.text(), r.tokens) for r in replies]
    assert results[0] == expected_tokens
    assert len(results[1][1]) <= 2 and results[1][1] == expected_tokens[1][:2]
    assert results[3] == expected_tokens
    # Hot sampling over a random model's vocabulary: the two drawn answers differ from greedy.
    assert results[2][1] != expected_tokens[1] or results[4][1] != expected_tokens[1]


def test_stop_ends_one_request_and_leaves_the_others(engine):
    long = GenerationSettings(max_new_tokens=40)
    images = [picture(10 + i) for i in range(4)]
    wanted = [reply.text() for reply in [engine.submit(image, QUESTIONS[1], [], long) for image in images]]
    stop = threading.Event()
    replies = [engine.submit(image, QUESTIONS[1], [], long, stop_event=stop if i == 2 else None) for i, image in enumerate(images)]
    stopped = replies[2]
    seen = []
    for text in stopped:
        seen.append(text)
        stop.set()
    assert stopped.finish_reason == "stopped" and len(stopped.tokens) < 40
    assert [r.text() for i, r in enumerate(replies) if i != 2] == [w for i, w in enumerate(wanted) if i != 2]


def test_an_error_in_one_request_reaches_only_its_sender(tiny_checkpoint):
    engine = fresh(tiny_checkpoint)
    images = [picture(20 + i) for i in range(4)]
    expected = [engine.answer(image, QUESTIONS[i], [], GREEDY) for i, image in enumerate(images)]
    prompts = [engine._fit_prompt(QUESTIONS[i], []) for i in range(4)]
    marker = next(t for t in prompts[3] if all(t not in p for p in prompts[:3]))
    step = engine.adapter.step

    def failing_step(input_ids, *args, **kwargs):
        # Only prompts (more than one token) carry the marker: a generated token may equal it.
        if input_ids.shape[1] > 1 and (input_ids == marker).any():
            raise RuntimeError("this request broke the model")
        return step(input_ids, *args, **kwargs)

    engine.adapter.step = failing_step
    engine.scheduler.prefixes.release([engine._image_key(i) for i in images])
    replies = [engine.submit(image, QUESTIONS[i], [], GREEDY) for i, image in enumerate(images)]
    assert [r.text() for r in replies[:3]] == expected[:3]
    with pytest.raises(RuntimeError, match="broke the model"):
        replies[3].text()
    engine.adapter.step = step
    # The engine is unharmed: the same question now gets its answer.
    assert engine.answer(images[3], QUESTIONS[3], [], GREEDY) == expected[3]
    engine.close()


def test_follow_up_reuses_the_image_and_the_earlier_turn(tiny_checkpoint):
    engine = fresh(tiny_checkpoint)
    vit = vit_counter(engine)
    image = picture(30)
    first = engine.answer(image, QUESTIONS[0], [], GREEDY)
    assert vit[0] == 1
    history = [Turn(QUESTIONS[0], first)]
    follow_up = engine.answer(image, QUESTIONS[1], history, GREEDY)
    assert vit[0] == 1  # not read again
    assert engine.scheduler.prefixes.entries.hits >= 1  # the first turn's keys/values were reused
    # The same answer as an engine that caches nothing.
    cold = fresh(tiny_checkpoint, image_cache_bytes=0, prefix_cache_bytes=0)
    cold_vit = vit_counter(cold)
    assert cold.answer(image, QUESTIONS[1], history, GREEDY) == follow_up
    assert cold.answer(image, QUESTIONS[2], history, GREEDY) == engine.answer(image, QUESTIONS[2], history, GREEDY)
    assert cold_vit[0] == 2
    cold.close()
    # Released: the next turn reads the image again.
    engine.release(image)
    engine.answer(image, QUESTIONS[2], history, GREEDY)
    assert vit[0] == 2
    engine.close()


def test_caches_stay_inside_their_byte_bounds(tiny_checkpoint):
    probe = fresh(tiny_checkpoint)
    probe.answer(picture(40), QUESTIONS[0], [], GREEDY)
    one_image = probe.scheduler.images.bytes
    probe.close()
    engine = fresh(tiny_checkpoint, image_cache_bytes=2 * one_image + 1, prefix_cache_bytes=4096)
    vit = vit_counter(engine)
    images = [picture(40 + i) for i in range(4)]
    for image in images:
        engine.answer(image, QUESTIONS[0], [], GREEDY)
    cache = engine.scheduler.images
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes and cache.evictions == 2
    assert engine.scheduler.prefixes.entries.bytes <= 4096
    engine.answer(images[0], QUESTIONS[0], [], GREEDY)  # evicted: read again
    engine.answer(images[3], QUESTIONS[0], [], GREEDY)  # kept: not read again
    assert vit[0] == 5
    engine.close()


@contextmanager
def forward_calls(engine: ChatEngine) -> Iterator[list[int]]:
    """Counts the model's forward passes inside the block: [n]."""
    forward = engine.adapter.model.forward
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    engine.adapter.model.forward = counted
    try:
        yield calls
    finally:
        del engine.adapter.model.forward


def test_recorded_maps_stay_inside_their_byte_bound_and_the_newest_needs_no_second_pass(tiny_checkpoint):
    asked = [(picture(60 + i), QUESTIONS[i % len(QUESTIONS)]) for i in range(8)]
    probe = fresh(tiny_checkpoint)
    sizes = []
    for image, question in asked:
        before = probe._attention.bytes
        probe.answer(image, question, [], GREEDY)
        sizes.append(probe._attention.bytes - before)
    probe.close()
    bound = 2 * max(sizes)  # room for two of the largest maps, far fewer than 8
    engine = fresh(tiny_checkpoint, attention_cache_bytes=bound)
    answers = [engine.answer(image, question, [], GREEDY) for image, question in asked]
    assert engine._attention.bytes <= bound and len(engine._attention) < len(asked)
    with forward_calls(engine) as calls:
        assert engine.answer_attention(*asked[-1], answers[-1]) is not None
    assert calls[0] == 0  # the newest answer's picture is still the recorded one
    engine.close()


def test_heat_map_comes_from_the_answering_pass_and_matches_a_second_pass(engine):
    image, question = picture(50), QUESTIONS[4]
    reply = engine.submit(image, question, [], GREEDY)
    answer = reply.text()
    with forward_calls(engine) as calls:
        recorded = engine.answer_attention(image, question, answer)
        overlay = engine.attention_overlay(image, question, answer)
    assert calls[0] == 0  # no second forward pass for the picture
    # Today's way: one more forward pass over the prompt and the answer's tokens.
    inputs = engine._fit_history(image, question, [])
    answer_ids = torch.tensor(reply.answer_tokens)
    second_pass = engine.adapter.answer_attention(inputs, answer_ids)
    assert recorded.shape == second_pass.shape == (len(answer_ids), engine.scheduler.images.get(reply.request.image_key).image_states.shape[1])
    torch.testing.assert_close(recorded, second_pass, atol=1e-5, rtol=1e-4)
    old = overlay_attention(image, engine.adapter.attention_grid(inputs, answer_ids))
    # At most one heat level apart where the weights' last digits round a pixel the other way: the
    # ramp climbs 3 colour levels a heat level, 55 % of which show.
    assert np.abs(np.asarray(overlay, np.float32) - np.asarray(old, np.float32)).max() <= 2


def test_a_follow_ups_heat_map_comes_from_its_answering_pass_too(engine):
    """The recorded attention is kept under the words asked (question and history), so a later turn's
    picture is found without a forward pass, and is that turn's own recorded attention."""
    image = picture(51)
    first = engine.answer(image, QUESTIONS[0], [], GREEDY)
    history = [Turn(QUESTIONS[0], first)]
    reply = engine.submit(image, QUESTIONS[1], history, GREEDY)
    answer = reply.text()
    with forward_calls(engine) as calls:
        recorded = engine.answer_attention(image, QUESTIONS[1], answer, history)
        assert engine.attention_overlay(image, QUESTIONS[1], answer, history) is not None
    assert calls[0] == 0  # no second forward pass for the follow-up's picture either
    assert recorded.shape[0] == len(reply.answer_tokens)
    torch.testing.assert_close(recorded, torch.stack(reply.request.attention[: len(reply.answer_tokens)]))


def test_inline_engine_runs_every_step_on_its_callers_threads(tiny_checkpoint, engine):
    """`threaded=False` (ZeroGPU: only the caller's `spaces.GPU` call has the GPU): no scheduler
    thread, each step on a caller's thread, and concurrent callers still get what each would alone."""
    inline = fresh(tiny_checkpoint, threaded=False)
    stepped_on: set[str] = set()
    step = inline.adapter.step

    def recording_step(*args, **kwargs):
        stepped_on.add(threading.current_thread().name)
        return step(*args, **kwargs)

    inline.adapter.step = recording_step
    images = [picture(100 + i) for i in range(6)]
    expected = [engine.answer(image, q, settings=GREEDY) for image, q in zip(images, QUESTIONS)]
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        got[i] = inline.answer(images[i], QUESTIONS[i], settings=GREEDY)

    callers = [threading.Thread(target=ask, args=(i,), name=f"caller-{i}") for i in range(6)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=60)
    assert [got.get(i) for i in range(6)] == expected
    assert stepped_on and stepped_on <= {f"caller-{i}" for i in range(6)}
    assert inline.scheduler._thread is None
    inline.close()


def _slow_encodes(engine: ChatEngine, slow: list[Image.Image], seconds: float, probe=None) -> list:
    """Makes encoding any of the images `slow` take `seconds` longer; returns the names of the
    threads that encoded them, each with `probe()` read as the wait began and as it ended."""
    encode, threads = engine.adapter.encode_images, []
    pixels = {image.tobytes() for image in slow}  # the engine hands the adapter copies

    def slowed(images):
        if any(image.tobytes() in pixels for image in images):
            before = probe() if probe else None
            time.sleep(seconds)
            threads.append((threading.current_thread().name, before, probe() if probe else None))
        return encode(images)

    engine.adapter.encode_images = slowed
    return threads


def test_a_new_image_is_encoded_beside_the_running_answers(tiny_checkpoint):
    """A newcomer's image is encoded on a thread of its own: the answers already running go on
    streaming meanwhile, and the newcomer's answer is the one it gets alone."""
    long = GenerationSettings(max_new_tokens=200)
    first_image, later_image = picture(70), picture(71)
    alone = fresh(tiny_checkpoint, image_cache_bytes=0, prefix_cache_bytes=0)
    wanted = tokens(alone.submit(later_image, QUESTIONS[2], [], GREEDY))
    first_alone = tokens(alone.submit(first_image, QUESTIONS[0], [], long))
    alone.close()
    assert len(first_alone) > 30  # long enough to be running throughout

    engine = fresh(tiny_checkpoint)
    step = engine.adapter.step

    def slow_step(*args, **kwargs):  # 5 ms a step: the first answer outlasts the newcomer's first tick
        time.sleep(0.005)
        return step(*args, **kwargs)

    engine.adapter.step = slow_step
    first = engine.submit(first_image, QUESTIONS[0], [], long)
    encoded_on = _slow_encodes(engine, [later_image], 0.3, probe=lambda: len(first.request.tokens))
    stream = iter(first)
    next(stream)
    start = time.perf_counter()
    later = engine.submit(later_image, QUESTIONS[2], [], GREEDY)
    assert tokens(later) == wanted
    waited = time.perf_counter() - start
    for _ in stream:
        pass
    assert first.tokens == first_alone
    assert waited >= 0.3
    [(thread, before, after)] = encoded_on
    assert thread == "mmchat-encode_0"
    assert after > before  # the first answer's rows went on decoding while the newcomer's image was encoded
    engine.close()


def test_a_full_engine_whose_rows_all_wait_for_their_images_answers_them(tiny_checkpoint, engine):
    """More requests with new images than the batch holds: those admitted wait for their encode
    while the rest wait in the queue, and every one gets its answer (the scheduler does not spin
    on a full batch that is only waiting)."""
    images = [picture(80 + i) for i in range(5)]
    expected = [engine.answer(image, QUESTIONS[i], [], GREEDY) for i, image in enumerate(images)]
    small = fresh(tiny_checkpoint, max_batch=2, timeout_s=30)
    _slow_encodes(small, images, 0.4)
    ticks = Path(f"/proc/self/task/{small.scheduler._thread.native_id}/stat")

    def cpu_s() -> float:  # the scheduler thread's CPU time
        fields = ticks.read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu_s()
    replies = [small.submit(image, QUESTIONS[i], [], GREEDY) for i, image in enumerate(images)]
    assert [r.text() for r in replies] == expected
    assert cpu_s() - before < 0.5  # three waits of 0.4 s for the encodes, spent waiting, not spinning
    small.close()


def test_a_burst_of_new_images_is_encoded_in_two_halves_side_by_side(tiny_checkpoint, engine):
    """Many users arriving at once: the images queued meanwhile are encoded in two halves at the
    same time, on the encode thread and its helper, and each user gets the answer given alone."""
    images = [picture(60 + i) for i in range(7)]
    expected = [engine.answer(image, QUESTIONS[i % len(QUESTIONS)], [], GREEDY) for i, image in enumerate(images)]
    burst = fresh(tiny_checkpoint)
    burst.scheduler.beside.split_at = 4
    encode, calls = burst.adapter.encode_images, []

    def timed(batch):  # each encode made 0.2 s longer, so that two at once overlap plainly
        start = time.perf_counter()
        time.sleep(0.2)
        states = encode(batch)
        calls.append((threading.current_thread().name, len(batch), start, time.perf_counter()))
        return states

    burst.adapter.encode_images = timed
    # The first image is encoded alone; the six that come meanwhile wait for it, then go together.
    replies = [burst.submit(images[0], QUESTIONS[0], [], GREEDY)]
    time.sleep(0.05)
    replies += [burst.submit(image, QUESTIONS[i % len(QUESTIONS)], [], GREEDY) for i, image in enumerate(images) if i]
    assert [r.text() for r in replies] == expected
    halves = sorted((name, n, start, end) for name, n, start, end in calls if n == 3)
    assert [(name, n) for name, n, _, _ in halves] == [("mmchat-encode-helper_0", 3), ("mmchat-encode_0", 3)]
    (_, _, start_a, end_a), (_, _, start_b, end_b) = halves
    assert max(start_a, start_b) < min(end_a, end_b)  # at the same time
    burst.close()


def test_stop_while_the_image_is_encoded_ends_only_that_request(tiny_checkpoint):
    engine = fresh(tiny_checkpoint)
    images = [picture(90), picture(91)]
    _slow_encodes(engine, images[:1], 0.3)
    stop = threading.Event()
    stopped = engine.submit(images[0], QUESTIONS[0], [], GREEDY, stop_event=stop)
    other = engine.submit(images[1], QUESTIONS[1], [], GREEDY)
    time.sleep(0.1)
    stop.set()
    assert stopped.text() == "" and stopped.finish_reason == "stopped"
    assert other.text() == engine.answer(images[1], QUESTIONS[1], [], GREEDY)
    engine.close()


def test_an_image_that_fails_to_encode_beside_fails_only_its_request(tiny_checkpoint, engine):
    """The encode thread encodes the waiting images together; when that batch fails, each image is
    encoded again in its request's prefill, so the error reaches only the request whose image broke it."""
    images = [picture(95 + i) for i in range(3)]
    expected = [engine.answer(image, QUESTIONS[i], [], GREEDY) for i, image in enumerate(images)]
    broken = fresh(tiny_checkpoint)
    encode = broken.adapter.encode_images

    def failing(batch):
        if any(image.tobytes() == images[1].tobytes() for image in batch):
            raise RuntimeError("this image broke the vision model")
        return encode(batch)

    broken.adapter.encode_images = failing
    replies = [broken.submit(image, QUESTIONS[i], [], GREEDY) for i, image in enumerate(images)]
    assert replies[0].text() == expected[0] and replies[2].text() == expected[2]
    with pytest.raises(RuntimeError, match="broke the vision model"):
        replies[1].text()
    broken.close()
