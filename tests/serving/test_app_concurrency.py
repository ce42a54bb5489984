"""32 people chatting at once through the served app: each gets their own answers; Stop ends only theirs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.families import Turn

USERS = 32
SHORT = {"max_new_tokens": 10, "do_sample": False, "temperature": 0.7}
LONG = {"max_new_tokens": 250, "do_sample": False, "temperature": 0.7}
QUESTIONS = ["What color is the square?", "How many objects are there?"]


def stops(user: int) -> bool:
    return user % 8 == 3  # 4 of the 32 press Stop during their second answer


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.full((48, 48, 3), rng.integers(120, 230), np.uint8)
    y, x = rng.integers(2, 30, size=2)
    a[y : y + 14, x : x + 14] = rng.integers(0, 255, size=3)
    return Image.fromarray(a)


def test_32_concurrent_conversations_get_their_own_answers_and_stop_ends_only_theirs(
    running_app: str, engine: ChatEngine, tmp_path: Path
) -> None:
    files = []
    for u in range(USERS):
        files.append(str(tmp_path / f"user{u}.png"))
        picture(u).save(files[-1])
    clients: list[Client | None] = [None] * USERS
    threads = [threading.Thread(target=lambda u=u: clients.__setitem__(u, Client(running_app, verbose=False))) for u in range(USERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    got: dict[int, list[Any]] = {u: [] for u in range(USERS)}
    stopped: dict[int, tuple[str, float]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(USERS)

    def user(u: int) -> None:
        try:
            client = clients[u]
            start.wait()
            first = client.predict({"text": QUESTIONS[0], "files": [handle_file(files[u])]}, *SHORT.values(), api_name="/chat")
            got[u].append(first[0])
            if not stops(u):
                second = client.predict({"text": QUESTIONS[1], "files": []}, *SHORT.values(), api_name="/chat")
                got[u].append(second[0])
                return
            job = client.submit({"text": QUESTIONS[1], "files": []}, *LONG.values(), api_name="/chat")
            while not job.outputs():  # the answer has started streaming: press Stop
                time.sleep(0.02)
            pressed = time.monotonic()
            job.cancel()
            while not job.done():
                time.sleep(0.05)
            # A str: the text as it streamed, cut. A list: the finished answer (its text, then its
            # heat-map), which ended before the Stop crossed the app.
            stopped[u] = (job.outputs()[-1], time.monotonic() - pressed)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=user, args=(u,)) for u in range(USERS)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=600)
    assert not errors, errors[0]

    # Contents, not counts: each answer is the one this conversation gets from the engine alone.
    short = GenerationSettings(**SHORT)
    for u in range(USERS):
        first = engine.answer(files[u], QUESTIONS[0], [], short)
        assert got[u][0] == first, f"user {u}, turn 1"
        if not stops(u):
            assert got[u][1] == engine.answer(files[u], QUESTIONS[1], [Turn(QUESTIONS[0], first)], short), f"user {u}, turn 2"
    # Stop cut those answers: each is a proper beginning of the answer it would have run to. A cancel
    # crosses a busy app in 0.9-1.9 s, while the tiny model's traced forwards stream its 250 tokens in
    # about one (drafts take 4-5 of its repetitive tokens a step), so an answer may end first: then
    # it is the whole answer, and at least one of the four must have been cut.
    assert sorted(stopped) == [u for u in range(USERS) if stops(u)]
    tokenizer = engine.adapter.tokenizer
    cut = 0
    for u, (partial, seconds) in stopped.items():
        first = engine.answer(files[u], QUESTIONS[0], [], short)
        full = engine.answer(files[u], QUESTIONS[1], [Turn(QUESTIONS[0], first)], GenerationSettings(**LONG))
        n_full = len(tokenizer(full, add_special_tokens=False)["input_ids"])
        assert n_full >= 200, f"user {u}: the long answer ends by itself after {n_full} tokens; the test needs a longer one"
        assert seconds < 30, f"user {u}: the answer went on {seconds:.1f} s after Stop"
        if not isinstance(partial, str):
            assert partial[0] == full, f"user {u}: ended before Stop landed, with another answer than its own"
            continue
        n_partial = len(tokenizer(partial, add_special_tokens=False)["input_ids"])
        assert n_partial < n_full and full.startswith(partial), f"user {u} was not stopped: {n_partial} of {n_full} tokens"
        cut += 1
    assert cut, "Stop cut none of the four long answers"
