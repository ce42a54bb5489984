"""The bad-input corpus sent to the running app, through gradio_client and through raw HTTP.

Every case must get its exact reply: the engine's own answer for the same bytes (computed here,
in-process), or its specific message; never a generic error. After each part the app must still
answer a normal question. Then 32 clients at once, each answer compared with the engine's.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from bad_inputs import ANSWER, QUESTION, QUESTIONS, SETTINGS, encode, scene, uploads
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from mmchat.serving.engine import ChatEngine, GenerationSettings

TOKENS = 8
GREEDY = (TOKENS, False, 0.7)
NOTICE, INFO = "⚠️", "ℹ️"
TIMEOUT_S = 60


# --------------------------------------------------------------------------- two ways in


class RawHTTP:
    """Gradio's documented REST route: upload, POST /gradio_api/call/chat, read its event stream."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=TIMEOUT_S)

    def upload(self, name: str, data: bytes) -> httpx.Response:
        return self.http.post("gradio_api/upload", files={"files": (name, data, "application/octet-stream")})

    def file(self, name: str, data: bytes) -> dict[str, Any]:
        response = self.upload(name, data)
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def chat(self, message: Any, settings: tuple = GREEDY) -> list[Any]:
        """The final reply, or raises AssertionError with the error event's data."""
        # NaN and infinities go out as JSON's NaN/Infinity, as a careless client would send them.
        body = json.dumps({"data": [message, *settings]}, allow_nan=True)
        posted = self.http.post("gradio_api/call/chat", content=body, headers={"Content-Type": "application/json"})
        posted.raise_for_status()
        event, data = None, None
        with self.http.stream("GET", f"gradio_api/call/chat/{posted.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = line.removeprefix("data:").strip()
                    break
        assert event == "complete", f"raw HTTP got {event}: {data}"
        return json.loads(data)[0]


def via_client(client: Client, message: dict[str, Any], settings: tuple = GREEDY) -> list[Any]:
    return client.predict(message, *settings, api_name="/chat")


def client_can_send(value: Any) -> bool:
    """gradio_client refuses NaN, infinities and lone surrogates itself; raw HTTP sends them."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    return True


# --------------------------------------------------------------------------- checks


def refusal(reply: list[Any]) -> str:
    assert isinstance(reply, list) and len(reply) == 1 and reply[0].startswith(NOTICE), reply
    return reply[0]


def answer_and_notes(reply: list[Any]) -> tuple[str, list[str]]:
    assert isinstance(reply, list) and isinstance(reply[0], str) and not reply[0].startswith(NOTICE), reply
    return reply[0], [m for m in reply[1:] if isinstance(m, str) and m.startswith(INFO)]


def expect(reply: list[Any], expected: str, reference: str | None, note: str | None = None) -> str | None:
    """None when `reply` is what the case wants, else what was wrong."""
    try:
        if expected != ANSWER:
            message = refusal(reply)
            return None if expected in message else f"message {message!r} lacks {expected!r}"
        answer, notes = answer_and_notes(reply)
        if answer != reference:
            return f"answer {answer!r} != engine's {reference!r}"
        if note and not any(note in n for n in notes):
            return f"no note {note!r} in {notes}"
        if not note and any("frame" in n for n in notes):
            return f"unexpected note in {notes}"
    except AssertionError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def reference(engine: ChatEngine):
    """The in-process engine's answer, cached: what the app must reply for the same input."""
    cache: dict[Any, str] = {}
    settings = GenerationSettings(max_new_tokens=TOKENS)

    def answer(data: bytes, question: str = QUESTION, tokens: int = TOKENS) -> str:
        key = (data, question, tokens)
        if key not in cache:
            cache[key] = engine.answer(data, question, settings=GenerationSettings(max_new_tokens=tokens))
        return cache[key]

    answer.settings = settings
    return answer


def still_answers(client: Client, raw: RawHTTP, reference: Any, tmp_path: Path) -> None:
    png = encode(scene(), "PNG")
    path = tmp_path / "health.png"
    path.write_bytes(png)
    expected = reference(png)
    assert via_client(client, {"text": QUESTION, "files": [handle_file(str(path))]})[0] == expected
    assert raw.chat({"text": QUESTION, "files": [raw.file("health.png", png)]})[0] == expected


# --------------------------------------------------------------------------- the corpus


def test_every_upload_through_client_and_raw_http(running_app: str, reference: Any, tmp_path: Path) -> None:
    client, raw = Client(running_app, verbose=False, download_files=False), RawHTTP(running_app)
    wrong = []
    for i, case in enumerate(uploads()):
        ref = reference(case.data) if case.expect == ANSWER else None
        # On disk under its own (odd) basename; a path-like name only travels as raw HTTP's filename.
        path = tmp_path / str(i) / Path(case.filename).name
        path.parent.mkdir()
        path.write_bytes(case.data)
        reply = via_client(client, {"text": QUESTION, "files": [handle_file(str(path))]})
        if problem := expect(reply, case.expect, ref, case.note):
            wrong.append(f"client / {case.name}: {problem}")
        reply = raw.chat({"text": QUESTION, "files": [raw.file(case.filename, case.data)]})
        if problem := expect(reply, case.expect, ref, case.note):
            wrong.append(f"raw HTTP / {case.name}: {problem}")
    assert not wrong, "\n".join(wrong)
    still_answers(client, raw, reference, tmp_path)


def test_files_gradio_refuses_get_its_message(running_app: str, reference: Any, tmp_path: Path) -> None:
    client, raw = Client(running_app, verbose=False, download_files=False), RawHTTP(running_app)
    pdf = tmp_path / "document.pdf"
    pdf.write_bytes(b"%PDF-1.4\n")
    with pytest.raises(AppError, match=r"Invalid file type: .*Please upload a file that is one of these formats: \[.image."):
        via_client(client, {"text": QUESTION, "files": [handle_file(str(pdf))]})
    # Over the upload limit: refused by the upload route itself, with the limit in the message.
    too_big = raw.upload("big.png", b"\0" * (50 * 1024 * 1024 + 1))
    assert too_big.status_code == 413
    assert too_big.text == "File size exceeded maximum allowed size of 52428800 bytes."
    still_answers(client, raw, reference, tmp_path)


@pytest.mark.parametrize("way", ["client", "raw HTTP"])
def test_every_question(running_app: str, reference: Any, tmp_path: Path, way: str) -> None:
    client, raw = Client(running_app, verbose=False, download_files=False), RawHTTP(running_app)
    png = encode(scene(), "PNG")
    (tmp_path / "scene.png").write_bytes(png)
    wrong = []
    for name, question, expected in QUESTIONS:
        if way == "client" and not client_can_send(question):
            continue
        if way == "client":
            reply = via_client(client, {"text": question, "files": [handle_file(str(tmp_path / "scene.png"))]})
        else:
            reply = raw.chat({"text": question, "files": [raw.file("scene.png", png)]})
        ref = reference(png, question) if expected == ANSWER else None
        if problem := expect(reply, expected, ref):
            wrong.append(f"{name}: {problem}")
    assert not wrong, "\n".join(wrong)
    still_answers(client, raw, reference, tmp_path)


@pytest.mark.parametrize("way", ["client", "raw HTTP"])
def test_every_setting(running_app: str, reference: Any, tmp_path: Path, way: str) -> None:
    client, raw = Client(running_app, verbose=False, download_files=False), RawHTTP(running_app)
    png = encode(scene(), "PNG")
    (tmp_path / "scene.png").write_bytes(png)
    wrong = []
    for name, settings, expected in SETTINGS:
        if way == "client" and not all(map(client_can_send, settings)):
            continue
        if way == "client":
            reply = via_client(client, {"text": QUESTION, "files": [handle_file(str(tmp_path / "scene.png"))]}, settings)
        else:
            reply = raw.chat({"text": QUESTION, "files": [raw.file("scene.png", png)]}, settings)
        ref = reference(png, QUESTION, int(float(settings[0]))) if expected == ANSWER else None
        if problem := expect(reply, expected, ref):
            wrong.append(f"{name}: {problem}")
    assert not wrong, "\n".join(wrong)
    still_answers(client, raw, reference, tmp_path)


def test_odd_messages_over_raw_http(running_app: str, reference: Any, tmp_path: Path) -> None:
    raw = RawHTTP(running_app)
    png = encode(scene(), "PNG")
    upload_first = f"{NOTICE} Please upload an image first, then ask about it."
    # No image, in every shape a careless caller may send a message: each gets the same message.
    for message in ({"text": "What color is the square?", "files": []}, "What color is the square?", None,
                    {"text": "What color is the square?", "files": "scene.png"}, {"files": []}, 5):
        assert refusal(raw.chat(message)) == upload_first, message
    # A null or non-text question with an image.
    reply = raw.chat({"text": None, "files": [raw.file("s.png", png)]})
    assert refusal(reply) == f"{NOTICE} Please type a question about the image."
    reply = raw.chat({"text": 42, "files": [raw.file("s.png", png)]})
    assert refusal(reply).startswith(f"{NOTICE} That question has no letters")
    reply = raw.chat({"text": "What color is the square?", "files": [raw.file("s.png", png)]}, (1, False, 0.7))
    answer, notes = answer_and_notes(reply)
    assert answer == reference(png, QUESTION, 1)
    assert f"{INFO} The answer was cut at Max new tokens (1); raise it under Generation settings" in notes[0]


def test_32_clients_at_once_get_their_own_answers(running_app: str, engine: ChatEngine, tmp_path: Path) -> None:
    # 32 different pictures (the square's colour and place vary), one question each, all at once.
    rng = np.random.default_rng(7)
    jobs = []
    for i in range(32):
        a = np.asarray(scene()).copy()
        x, y = rng.integers(0, 44, 2)
        a[y : y + 20, x : x + 20] = rng.integers(0, 256, 3)
        path = tmp_path / f"client{i}.png"
        Image.fromarray(a).save(path)
        jobs.append((str(path), ["What color is the square?", "How many objects are there?"][i % 2]))
    settings = GenerationSettings(max_new_tokens=TOKENS)
    expected = [engine.answer(p, q, settings=settings) for p, q in jobs]
    assert len(set(expected)) > 1, "the pictures must give different answers, or a mix-up would go unseen"

    def ask(job: tuple[str, str]) -> str:
        reply = via_client(Client(running_app, verbose=False, download_files=False), {"text": job[1], "files": [handle_file(job[0])]})
        return reply[0]

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(ask, jobs))
    assert got == expected


def test_nan_settings_are_not_silently_fixed() -> None:
    # The checks behind the app's messages, in-process: one place for UI, API and evaluation.
    from mmchat.serving.settings import ChatInputError

    for bad in (math.nan, None, "many", True, 0, 4097):
        with pytest.raises(ChatInputError, match="Max new tokens"):
            GenerationSettings(max_new_tokens=bad)
    assert GenerationSettings(max_new_tokens="12").max_new_tokens == 12
    assert GenerationSettings(do_sample=False, temperature=0).generate_kwargs() == {"max_new_tokens": 64, "do_sample": False}
