"""The remote family against a real model server: `transformers serve` on a tiny random Llama 3.2 Vision.

The server (from `transformers[serving]`, in requirements-dev.txt: the app itself is only its
client) is started once for the module, pinned to a tiny Mllama saved to a temporary folder. The
same checkpoint loaded in this process answers the same questions, so the remote answers can be
checked word for word: the image and every earlier turn reached the server as the local model
sees them. Then the error messages a user gets when the server is down, slow or refuses the model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fixtures_app import free_port, serve_app, stop_process
from PIL import Image
from serving.test_families import mllama_model, mllama_processor

from mmchat.serving.engine import ChatEngine, GenerationSettings, LoadError, ServingError, Turn
from mmchat.serving.families.openai_remote import OpenAIRemoteAdapter, parse_source
from mmchat.serving.loading import load_model
from mmchat.serving.ui import _description

START_TIMEOUT_S = 120  # importing torch and FastAPI and loading the tiny model: ~10 s on 2 idle cores
SETTINGS = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    processor = mllama_processor(vocab_size=200, whole_text_tokens=True)
    model = mllama_model(processor)
    # Never end early: the eos rows of the LM head are zeroed, so the 12 tokens asked for all come.
    with torch.no_grad():
        for token_id in model.config.text_config.eos_token_id:
            model.lm_head.weight[token_id] = 0
    path = tmp_path_factory.mktemp("tiny-mllama")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def wait_for_health(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    pytest.fail(f"transformers serve did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(checkpoint: str, tmp_path_factory) -> Iterator[str]:
    """`transformers serve CHECKPOINT` on a free port (pinned to that model); yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()",
               "serve", checkpoint, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log)
        yield url + "/v1"
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def local(checkpoint: str) -> ChatEngine:
    """The same checkpoint answering in this process: the reference."""
    return ChatEngine(load_model(checkpoint, quantization="none", device="cpu"))


@pytest.fixture(scope="module")
def remote(server: str, checkpoint: str) -> ChatEngine:
    return ChatEngine(load_model(f"openai:{server}#{checkpoint}"))


@pytest.fixture
def picture() -> Image.Image:
    image = Image.new("RGB", (64, 48), (200, 200, 200))
    image.paste((220, 40, 40), (8, 8, 30, 30))
    return image


def test_a_two_turn_conversation_streams_the_answers_the_model_gives(remote, local, picture):
    first_q, second_q = "what colour is the square", "and what about the disc"
    pieces = list(remote.stream(picture, first_q, [], SETTINGS))
    first = pieces[-1]
    assert len(pieces) >= 2 and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))  # streamed, growing
    assert first and first == local.answer(picture, first_q, [], SETTINGS)

    history = [Turn(first_q, first)]
    second = remote.answer(picture, second_q, history, SETTINGS)
    assert second == local.answer(picture, second_q, history, SETTINGS)
    # The earlier turn reached the server: without it the model answers otherwise.
    assert second != local.answer(picture, second_q, [], SETTINGS)


def test_stop_ends_the_answer(remote, picture):
    stop = threading.Event()
    stream = remote.stream(picture, "what colour is the square", [], SETTINGS, stop_event=stop)
    first = next(stream)
    stop.set()  # the Stop button
    assert list(stream) == [] and first


def test_a_batch_of_questions_is_answered_like_the_chat(remote, local, picture):
    questions = ["what colour is the square", "how many shapes are there"]
    answers = remote.answer_batch([picture, picture], questions, SETTINGS)
    assert answers == [local.answer(picture, q, [], SETTINGS) for q in questions]


def test_the_model_line_and_no_attention_picture(remote, checkpoint, server, picture):
    assert "no picture of where the model looked" in _description(remote)
    # The server's id for the model (here a folder on this machine, so only its name), and the server.
    assert remote.describe() == f"{Path(checkpoint).name} · openai · remote on {server} · multi-turn"
    assert remote.attention_overlay(picture, "what colour is the square", "red") is None


def test_a_server_that_is_down_gets_a_clear_message(picture):
    engine = ChatEngine(load_model(f"openai:http://127.0.0.1:{free_port()}/v1#any-model"))
    with pytest.raises(ServingError, match=r"Cannot reach the model server at http://127\.0\.0\.1:\d+/v1: is it running"):
        engine.answer(picture, "what colour is the square")


def test_a_model_the_server_does_not_serve_gets_a_clear_message(server, picture):
    engine = ChatEngine(load_model(f"openai:{server}#meta-llama/Llama-3.2-11B-Vision-Instruct"))
    with pytest.raises(ServingError, match=r"does not serve 'meta-llama/Llama-3\.2-11B-Vision-Instruct' \(HTTP 400: Server is pinned"):
        engine.answer(picture, "what colour is the square")


def test_a_slow_server_gets_a_clear_message(server, checkpoint, picture):
    engine = ChatEngine(OpenAIRemoteAdapter(server, checkpoint, timeout_s=0.001))
    with pytest.raises(ServingError, match="No answer from the model server .* within 0.001 s"):
        engine.answer(picture, "what colour is the square")


def test_the_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MMCHAT_OPENAI_API_KEY", "sk-test")
    adapter = load_model("openai:http://127.0.0.1:9/v1/#org/model")
    assert (adapter.base_url, adapter.model_id) == ("http://127.0.0.1:9/v1", "org/model")
    assert adapter.client.headers["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("source", ["openai:http://127.0.0.1:8000/v1", "openai:127.0.0.1:8000#m", "openai:#m"])
def test_a_malformed_source_says_the_form_it_takes(source):
    with pytest.raises(LoadError, match=r"openai:http://HOST:PORT/v1#MODEL_ID"):
        load_model(source)
    with pytest.raises(ValueError):
        parse_source(source)


def test_the_app_answers_through_the_server(server, checkpoint, local, tmp_path):
    """`python app.py --model openai:URL#ID`, asked through its API."""
    from gradio_client import Client, handle_file

    image = tmp_path / "square.png"
    Image.new("RGB", (64, 48), (40, 80, 220)).save(image)
    # The local model's answer: the first test showed the server gives the same.
    expected = local.answer(image, "how many shapes are there", [], GenerationSettings())
    with serve_app(["--model", f"openai:{server}#{checkpoint}"], tmp_path) as url:
        client = Client(url, verbose=False)
        reply = client.predict(
            {"text": "how many shapes are there", "files": [handle_file(str(image))]}, api_name="/chat"
        )
    assert reply == [expected]  # the answer, and no attention picture after it
    # Users are not queued behind one another in the app: the server batches their questions.
    assert "16 answer(s) at once" in (tmp_path / "app.log").read_text()
