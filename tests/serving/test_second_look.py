"""The second look: an unsure count is chosen again over shifted views of the picture, through the
same engine the app and the evaluation CLI use; sure answers and other families are not."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import torch
from test_scheduler import picture, tokens  # tests/serving is on pytest's sys.path

from mmchat.serving.answer_tree import question_kind
from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.second_look import LOOK_FILE, SecondLook

COUNT = "How many objects are there?"
ONE_TOKEN = GenerationSettings(max_new_tokens=1)
GREEDY = GenerationSettings(max_new_tokens=6)


def engine_with(tiny_checkpoint: str, tmp_path, rule: SecondLook | None, **kwargs) -> ChatEngine:
    path = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, path)
    if rule is not None:
        rule.save(path)
    # fp32: the tokens are compared with a hand-run forward's.
    return ChatEngine.from_pretrained(path, device="cpu", dtype="float32", **kwargs)


def log_probs_by_hand(engine: ChatEngine, images: list, question: str) -> torch.Tensor:
    """(vocab,) the mean log-probability of the first answer token over `images`, one forward each."""
    adapter = engine.adapter
    rows = []
    with torch.inference_mode():
        for image in images:
            logits = adapter.model(**adapter.inputs(image, question, [])).logits[0, -1]
            rows.append(logits.float().log_softmax(-1))
    return torch.stack(rows).mean(0)


def first_token_by_hand(engine: ChatEngine, images: list, question: str) -> int:
    return int(log_probs_by_hand(engine, images, question).argmax())


def test_the_loader_reads_the_rule_beside_the_weights(tiny_checkpoint, tmp_path) -> None:
    rule = SecondLook(("count",), 0.9, 4)
    engine = engine_with(tiny_checkpoint, tmp_path, rule)
    assert (tmp_path / "model" / LOOK_FILE).exists()
    assert engine.adapter.second_look == rule
    engine.close()
    assert ChatEngine.from_pretrained(tiny_checkpoint, device="cpu").adapter.second_look is None


def test_views_border_the_picture_with_its_background(shapes_image) -> None:
    views = SecondLook(("count",), 0.9, 4).views(shapes_image, (96, 96))
    original = np.asarray(shapes_image)
    # 4 of the model's 96 px is 3 of this picture's 64: top-left, bottom-right, top-right, bottom-left.
    for view, (x, y) in zip(views, [(3, 3), (0, 0), (0, 3), (3, 0)]):
        a = np.asarray(view)
        assert a.shape == (67, 67, 3)
        assert np.array_equal(a[y : y + 64, x : x + 64], original)
        border = np.ones((67, 67), bool)
        border[y : y + 64, x : x + 64] = False
        assert (a[border] == 200).all()  # the picture's grey ground, not black


def test_an_unsure_count_is_chosen_over_five_views(tiny_checkpoint, tmp_path) -> None:
    """With `below` over 1 every count is unsure: each first token is chosen from the mean
    log-probability over the picture and its four views, as a hand-run forward per view gives, which
    is not what the picture alone gives (so the views did weigh in)."""
    rule = SecondLook(("count",), 1.01, 4)
    engine = engine_with(tiny_checkpoint, tmp_path, rule)
    chosen_from = []
    look_again = engine.scheduler._look_again
    engine.scheduler._look_again = lambda last, rows: chosen_from.append(look_again(last, rows)) or chosen_from[-1]
    images = [picture(i) for i in range(4)]
    replies = [engine.submit(image, COUNT, [], ONE_TOKEN) for image in images]
    got = [reply.text() and reply.tokens[0] for reply in replies]
    assert engine.scheduler.second_looks == len(images)
    chosen = torch.cat(chosen_from)  # (4, vocab): the rows of one prefill or of a few
    size = engine.adapter.input_size()
    looked = torch.stack([log_probs_by_hand(engine, [image] + rule.views(image, size), COUNT) for image in images])
    alone = torch.stack([log_probs_by_hand(engine, [image], COUNT) for image in images])
    assert torch.allclose(chosen.log_softmax(-1), looked, atol=1e-4)
    assert not torch.allclose(looked, alone, atol=1e-3)
    assert got == looked.argmax(-1).tolist()
    engine.close()


@pytest.mark.parametrize("below, question", [(0.0, COUNT), (1.01, "What color is the square?")], ids=["sure", "colour"])
def test_a_sure_answer_or_another_family_is_not_asked_again(tiny_checkpoint, tmp_path, below, question) -> None:
    engine = engine_with(tiny_checkpoint, tmp_path, SecondLook(("count",), below, 4))
    encoded = []
    encode = engine.adapter.encode_images
    engine.adapter.encode_images = lambda images: encoded.append(len(images)) or encode(images)
    image = picture(3)
    reply = engine.submit(image, question, [], ONE_TOKEN)
    reply.text()
    assert reply.tokens[0] == first_token_by_hand(engine, [image], question)
    assert engine.scheduler.second_looks == 0 and encoded == [1]
    engine.close()


def test_the_others_get_their_first_words_before_a_second_look_runs(tiny_checkpoint, tmp_path) -> None:
    """In one prefill with unsure counts, the colour questions' first tokens are handed out before the
    counts' look runs, and every answer, the counts' walked on through their trees of earlier
    answers after the look, is token for token what each gets alone."""
    # Inline (no scheduler thread): the test runs the round in which all six are admitted together.
    engine = engine_with(tiny_checkpoint, tmp_path, SecondLook(("count",), 1.01, 4), threaded=False)
    # Three tokens: the third comes from a decode step after the tree, at the position the walk left.
    settings = GenerationSettings(max_new_tokens=3)
    asked = [(picture(40 + i), COUNT if i % 2 else "What color is the square?") for i in range(6)]
    alone = [tokens(engine.submit(image, question, [], settings)) for image, question in asked]
    # The random model's answers never end, so no tree would hold them: its first tokens are taught
    # as whole answers, often enough to be worth drafting, which gives each row a tree whose node is
    # walked after the look.
    scheduler = engine.scheduler
    for (_, question), answer in zip(asked * 10, alone * 10):
        scheduler.likely.learn(question_kind(question), [answer[0], min(scheduler.eos)])
    scheduler.release(list(scheduler.images.keys()))

    seen_at_look, trees = [], []
    look_later = scheduler._look_later

    def watching(batch, waiting):
        seen_at_look.append([r.request.out.qsize() for r in replies])
        trees.extend(w.tree is not None for w in waiting)
        return look_later(batch, waiting)

    scheduler._look_later = watching
    replies = [engine.submit(image, question, [], settings) for image, question in asked]
    scheduler.pump()  # one round: all six in one prefill, then the counts' look
    assert len(seen_at_look) == 1 and any(trees)
    assert [n > 0 for n in seen_at_look[0]] == [i % 2 == 0 for i in range(6)]  # colours out, counts waiting
    assert [tokens(reply) for reply in replies] == alone
    engine.close()


def held_look(engine: ChatEngine, fail: bool = False):
    """The scheduler's look made to wait until the test releases it (5 s at most), and to fail if `fail`."""
    started, release, released_at = threading.Event(), threading.Event(), []
    look_again = engine.scheduler._look_again

    def held(last, rows):
        started.set()
        release.wait(timeout=5)
        released_at.append(time.monotonic())
        if fail:
            raise RuntimeError("the views could not be read")
        return look_again(last, rows)

    engine.scheduler._look_again = held
    return started, release, released_at


def test_a_second_look_runs_beside_the_others_answers(tiny_checkpoint, tmp_path) -> None:
    """While one user's unsure count is looked at again, another user's question is answered (it does
    not wait for the look); then the count gets the answer the same engine gives it alone."""
    rule = SecondLook(("count",), 1.01, 4)
    engine = engine_with(tiny_checkpoint, tmp_path, rule)
    alone = engine_with(tiny_checkpoint, tmp_path / "alone", rule, threaded=False)
    started, release, released_at = held_look(engine)
    count = engine.submit(picture(50), COUNT, [], GREEDY)
    assert started.wait(timeout=30)
    colour = engine.submit(picture(51), "What color is the square?", [], GREEDY)
    colour_tokens = tokens(colour)
    answered_at = time.monotonic()
    release.set()
    assert tokens(count) == tokens(alone.submit(picture(50), COUNT, [], GREEDY))
    assert answered_at < released_at[0]  # the colour's answer came while the look was held
    assert colour_tokens == tokens(alone.submit(picture(51), "What color is the square?", [], GREEDY))
    engine.close()
    alone.close()


def test_a_failed_second_look_reaches_its_user_alone(tiny_checkpoint, tmp_path) -> None:
    engine = engine_with(tiny_checkpoint, tmp_path, SecondLook(("count",), 1.01, 4))
    started, release, _ = held_look(engine, fail=True)
    count = engine.submit(picture(52), COUNT, [], GREEDY)
    assert started.wait(timeout=30)
    colour = engine.submit(picture(53), "What color is the square?", [], GREEDY)
    assert colour.text()
    release.set()
    with pytest.raises(RuntimeError, match="could not be read"):
        count.text()
    assert engine.submit(picture(54), "What color is the square?", [], GREEDY).text()  # the engine goes on
    engine.close()


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_a_quantized_models_look_runs_in_the_step(tiny_checkpoint, tmp_path, mode) -> None:
    """bitsandbytes' layers write to themselves in their forwards, so a quantized model's look runs on
    the scheduler's thread, not beside it; the unsure count is still looked at and answered."""
    pytest.importorskip("bitsandbytes")
    path = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, path)
    SecondLook(("count",), 1.01, 4).save(path)
    engine = ChatEngine.from_pretrained(path, device="cpu", quantization=mode)
    assert not engine.adapter.steps_side_by_side
    threads = []
    look_again = engine.scheduler._look_again
    engine.scheduler._look_again = lambda last, rows: threads.append(threading.current_thread().name) or look_again(last, rows)
    assert engine.submit(picture(55), COUNT, [], GREEDY).text()
    assert threads == ["mmchat-scheduler"] and engine.scheduler.second_looks == 1
    engine.close()
