"""The chat app: the real `app.py` over HTTP with gradio_client, and the chat function in-process."""

from __future__ import annotations

import base64
import html
import importlib.util
import io
import json
import re
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.families import Turn
from mmchat.serving.overlay import heat_layer
from mmchat.serving.ui import BOUNDARY, HEAT_MAP_HTML, NOTICE, build_demo, conversation_context

ROOT = Path(__file__).resolve().parents[2]

GREEDY = {"max_new_tokens": 24, "do_sample": False, "temperature": 0.7}


@pytest.fixture
def image_file(shapes_image: Image.Image, tmp_path: Path) -> str:
    path = tmp_path / "shapes.png"
    shapes_image.save(path)
    return str(path)


@pytest.fixture
def second_image_file(tmp_path: Path) -> str:
    path = tmp_path / "green.png"
    Image.new("RGB", (48, 48), (40, 170, 60)).save(path)
    return str(path)


@pytest.fixture
def corrupt_file(tmp_path: Path) -> str:
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"these bytes are not an image at all")
    return str(path)


def ask(client: Client, text: str, files: list[str] = ()) -> list[Any]:
    """One `/chat` call; the endpoint's reply is a list whose first item is the text."""
    reply = client.predict({"text": text, "files": [handle_file(f) for f in files]}, *GREEDY.values(), api_name="/chat")
    assert isinstance(reply, list) and isinstance(reply[0], str), reply
    return reply


def test_chat_api_answers_like_the_engine(running_app: str, engine: ChatEngine, image_file: str) -> None:
    client = Client(running_app, verbose=False)
    settings = GenerationSettings(**GREEDY)
    question = "What color is the small circle?"
    reply = ask(client, question, [image_file])
    first = engine.answer(image_file, question, settings=settings)
    assert reply[0] == first
    # The attention map follows the text, for the browser to draw: the upload, as the app serves
    # it, with the map's heat layer over it as a PNG data URI.
    shown = reply[1]["content"]
    shown = shown if isinstance(shown, str) else next(item for item in shown if isinstance(item, str))
    assert shown.startswith(HEAT_MAP_HTML) and "Where the model looked" in shown
    src = html.unescape(re.search(r'<img src="(gradio_api/file=[^"]+)"', shown).group(1))
    with urllib.request.urlopen(running_app.rstrip("/") + "/" + src) as served:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(served.read())).convert("RGB")),
                              np.asarray(Image.open(image_file).convert("RGB")))
    layer = Image.open(io.BytesIO(base64.b64decode(re.search(r'data:image/png;base64,([^"]+)"', shown).group(1))))
    wanted = heat_layer(engine.attention_grid(image_file, question, first))
    assert np.abs(np.asarray(layer.convert("LA"), int) - wanted.astype(int)).max() <= 3

    # Same session, no new image: a follow-up about the same image, with the first turn as history.
    follow_up = "How many objects are there?"
    reply = ask(client, follow_up)
    assert reply[0] == engine.answer(image_file, follow_up, [Turn(question, first)], settings)

    # A fresh session has no image yet: the user is told to upload one, in the chat.
    client.reset_session()
    reply = ask(client, "What is this?")
    assert reply == [f"{NOTICE} Please upload an image first, then ask about it."]


def test_chat_api_explains_bad_files_and_keeps_working(
    running_app: str,
    engine: ChatEngine,
    corrupt_file: str,
    image_file: str,
) -> None:
    client = Client(running_app, verbose=False)
    reply = ask(client, "What is this?", [corrupt_file])
    assert len(reply) == 1 and reply[0].startswith(NOTICE)
    assert "not an image" in reply[0]
    reply = ask(client, "x" * 1001, [image_file])
    assert "please keep it under 1000" in reply[0]
    # The server is unharmed and the next good message is answered.
    question = "Is there a red square?"
    reply = ask(client, question, [image_file])
    assert reply[0] == engine.answer(image_file, question, settings=GenerationSettings(**GREEDY))


# --------------------------------------------------------------------------- in-process


def respond(demo: Any, message: dict[str, Any], history: list[dict[str, Any]]) -> list[Any]:
    """Run the chat function to the end, as the UI does, and return its final reply."""
    replies = list(demo.fn(message, history, *GREEDY.values()))
    assert replies and isinstance(replies[-1], list), replies
    return replies[-1]


def as_ui_history(demo: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages the way the browser hands them back: through the Chatbot's postprocess + preprocess."""
    return demo.chatbot.preprocess(demo.chatbot.postprocess(messages))


def chat_turn(demo: Any, history: list[dict[str, Any]], text: str, files: list[str] = ()) -> str:
    reply = respond(demo, {"text": text, "files": list(files)}, as_ui_history(demo, history))
    history.append({"role": "user", "content": [{"path": f} for f in files] + [text]})
    history += [m if isinstance(m, dict) else {"role": "assistant", "content": m} for m in reply]
    return reply[0]


def test_multi_turn_uses_the_latest_image_and_its_turns(
    engine: ChatEngine,
    image_file: str,
    second_image_file: str,
) -> None:
    demo = build_demo(engine, examples=[])
    settings = GenerationSettings(**GREEDY)
    history: list[dict[str, Any]] = []

    q1, q2, q3, q4 = "What color is the circle?", "And the square?", "What shape is it?", "How many?"
    a1 = chat_turn(demo, history, q1, [image_file])
    assert a1 == engine.answer(image_file, q1, settings=settings)
    a2 = chat_turn(demo, history, q2)
    assert a2 == engine.answer(image_file, q2, [Turn(q1, a1)], settings)
    # A refused message is shown but never given to the model as a turn.
    assert chat_turn(demo, history, "   ").startswith(NOTICE)
    # A new image starts a new context: the turns about the first image are left out.
    a3 = chat_turn(demo, history, q3, [second_image_file])
    assert a3 == engine.answer(second_image_file, q3, settings=settings)
    a4 = chat_turn(demo, history, q4)
    assert a4 == engine.answer(second_image_file, q4, [Turn(q3, a3)], settings)
    assert conversation_context(as_ui_history(demo, history)) == (second_image_file, [Turn(q3, a3), Turn(q4, a4)])


class StubAdapter:
    multi_turn = False
    shows_attention = False


class StubEngine:
    """Records what the UI passes to the engine; answers "stub answer" one word at a time."""

    adapter = StubAdapter()

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str, list[Turn]]] = []

    def describe(self) -> str:
        return "stub model · none on cpu"

    def check(self, image: Any, question: str) -> tuple[Image.Image, str]:
        return Image.open(image), question

    def stream(self, image: Any, question: str, history: list[Turn], settings: GenerationSettings) -> Iterator[str]:
        self.calls.append((image, question, list(history)))
        yield "stub"
        yield "stub answer"

    def attention_overlay(self, *args: Any) -> None:
        return None


def test_build_demo_with_a_stub_engine(image_file: str) -> None:
    stub = StubEngine()
    demo = build_demo(stub, examples=[])
    assert "stub model" in demo.description
    assert "answers each question on its own" in demo.description
    assert list(demo.fn({"text": "q?", "files": [image_file]}, [], *GREEDY.values())) == [
        "stub",
        "stub answer",
        ["stub answer"],
    ]
    # Files can come back as dicts (retry resends the saved message): the path is what counts.
    list(demo.fn({"text": "again?", "files": [{"path": image_file}]}, [], *GREEDY.values()))
    assert [call[0] for call in stub.calls] == [image_file, image_file]


def test_the_app_traces_its_forwards_while_it_answers_and_its_answers_do_not_change(
    tiny_checkpoint: str, image_file: str, tmp_path: Path
) -> None:
    """`python app.py` traces the model's forwards on a thread of its own once it serves: every graph
    is kept, it says so in its log, and it answers as the eager engine does, during and after. (The
    same app, started once for both: Gradio's request statistics are not rebuilt at every answer.)"""
    from fixtures_app import serve_app

    eager = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu")  # bf16 where the CPU has AMX, as the app
    settings = GenerationSettings(**GREEDY)
    questions = ["What color is the small circle?", "How many objects are there?", "Is there a red square?"]
    expected = [eager.answer(image_file, q, settings=settings) for q in questions]
    eager.close()
    log = tmp_path / "app.log"
    with serve_app(["--model", tiny_checkpoint], tmp_path) as url:
        client = Client(url, verbose=False)
        for q, answer in zip(questions, expected):
            client.reset_session()
            assert ask(client, q, [image_file])[0] == answer
        deadline = time.monotonic() + 120
        while "mmchat: traced" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        line = next(line for line in log.read_text().splitlines() if line.startswith("mmchat: traced"))
        kept, tried = (int(w) for w in line.split()[2:5:2])
        assert kept == tried > 0, line
        for q, answer in zip(questions, expected):
            client.reset_session()
            assert ask(client, q, [image_file])[0] == answer
        # Gradio's request statistics (its View API page's) are recomputed every 100 events, not
        # after each answer (app.py): after these 6 answers none are computed yet.
        with urllib.request.urlopen(url + "monitoring/summary", timeout=10) as response:
            assert json.loads(response.read()) == {"functions": {}}


def test_eager_is_a_flag_and_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("mmchat_app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert not app.parse_args([]).eager and app.parse_args(["--eager"]).eager
    monkeypatch.setenv("MMCHAT_EAGER", "1")
    assert app.parse_args([]).eager


def test_app_exits_2_with_a_one_line_error_when_the_model_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("mmchat_app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert app.main(["--model", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmchat: cannot start:") and "\n" not in err


class DecliningEngine(StubEngine):
    """Answers every question `unanswerable`, as a world-bound model does for a photo."""

    def stream(self, image: Any, question: str, history: list[Turn], settings: GenerationSettings) -> Iterator[str]:
        self.calls.append((image, question, list(history)))
        yield "unanswerable"

    def attention_overlay(self, *args: Any) -> None:
        raise AssertionError("no heat-map under a note")


def test_unanswerable_is_shown_as_a_note_with_no_heat_map(image_file: str) -> None:
    demo = build_demo(DecliningEngine(), examples=[])
    reply = list(demo.fn({"text": "What animal is this?", "files": [image_file]}, [], *GREEDY.values()))[-1]
    assert len(reply) == 1 and reply[0].startswith(BOUNDARY)
    note = reply[0]
    assert "Salesforce/blip-vqa-base" in note and "Llama-3.2" in note and "MMCHAT_MODEL" in note
    # The note is never handed back to the model as an answer.
    history = [{"role": "user", "content": [{"path": image_file}, "What animal is this?"]},
               {"role": "assistant", "content": note}]
    assert conversation_context(history) == (image_file, [])


class WordingDecliningEngine(DecliningEngine):
    """Declines a question about a picture of its world that its gate cannot read ("how many circles")."""

    class adapter(StubAdapter):  # noqa: N801 (stands where the engine's adapter instance does)
        world_gate = types.SimpleNamespace(config={"about": "coloured shapes", "examples": ["How many circles are there?"]})

    def declined_because(self, image: Any, question: str) -> str:
        return "question"


def test_a_question_declined_about_a_picture_of_the_world_says_the_question_is_why(image_file: str) -> None:
    reply = list(build_demo(WordingDecliningEngine(), examples=[]).fn(
        {"text": "how many circles", "files": [image_file]}, [], *GREEDY.values()
    ))[-1]
    note = reply[0]
    assert note.startswith(BOUNDARY) and "can't answer that question" in note
    assert "coloured shapes" in note and "*How many circles are there?*" in note  # how to ask instead
    assert "Salesforce/blip-vqa-base" not in note  # no advice to serve a model for photos


def test_answers_run_inside_spaces_gpu_where_spaces_is_installed(image_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a ZeroGPU Space the chat function must run inside `spaces.GPU`; without `spaces`, as is."""
    import functools
    import types

    entered: list[str] = []

    def gpu(fn):
        @functools.wraps(fn)
        def inside(*args, **kwargs):
            entered.append(fn.__name__)
            yield from fn(*args, **kwargs)

        return inside

    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` fails, as off Spaces
    assert not hasattr(build_demo(StubEngine(), examples=[]).fn, "__wrapped__")
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    demo = build_demo(StubEngine(), examples=[])
    assert list(demo.fn({"text": "q?", "files": [image_file]}, [], *GREEDY.values()))[-1] == ["stub answer"]
    assert entered == ["respond"]


def test_on_zerogpu_every_model_step_runs_inside_spaces_gpu(
    tiny_checkpoint: str, image_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZeroGPU lends the GPU only inside a `spaces.GPU` call: app.py then builds the engine inline
    (no scheduler thread), so generation and the heat-map run within the call, not beside it."""
    import functools
    import threading
    import types

    from mmchat.serving.ui import zero_gpu

    inside = threading.local()

    def gpu(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            inside.gpu = True
            try:
                yield from fn(*args, **kwargs)
            finally:
                inside.gpu = False

        return wrapped

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zero_gpu()
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    engine = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", threaded=not zero_gpu())
    steps: list[bool] = []
    step = engine.adapter.step

    def recording_step(*args, **kwargs):
        steps.append(getattr(inside, "gpu", False))
        return step(*args, **kwargs)

    engine.adapter.step = recording_step
    reply = list(build_demo(engine, examples=[]).fn({"text": "What color is the circle?", "files": [image_file]},
                                                   [], *GREEDY.values()))[-1]
    assert steps and all(steps)  # every step of the answer and its heat-map ran inside the call
    assert reply[0] == engine.answer(image_file, "What color is the circle?", settings=GenerationSettings(**GREEDY))
    engine.close()
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert not zero_gpu()


def test_stop_keeps_the_partial_answer_marked_and_out_of_the_history(image_file: str) -> None:
    from mmchat.serving.ui import STOPPED, mark_stopped

    asked = [{"role": "user", "content": [{"path": image_file}, "What color?"]}]
    chat, state = mark_stopped([*asked, {"role": "assistant", "content": "blu"}])
    assert chat[-1]["content"] == f"blu {STOPPED}" and state == chat
    # Stopped before the first word: a marked bubble, not an empty one.
    assert mark_stopped(asked)[0][-1] == {"role": "assistant", "content": STOPPED}
    # Stop pressed after the answer ended (its note already shown): nothing changes.
    done = [*asked, {"role": "assistant", "content": "blue"}, {"role": "assistant", "content": "ℹ️ note"}]
    assert mark_stopped(done)[0] == done
    # ... or with its heat-map shown: the picture stays, and no mark.
    pictured = [*asked, {"role": "assistant", "content": "blue"},
                {"role": "assistant", "content": [{"path": image_file, "alt_text": "heat-map"}, "*Where the model looked*"]}]
    assert mark_stopped(pictured)[0] == pictured
    mapped = [*asked, {"role": "assistant", "content": "blue"},
              {"role": "assistant", "content": f'{HEAT_MAP_HTML}-panels" style="display:flex"></div>\n\n*Where the model looked*'}]
    assert mark_stopped(mapped)[0] == mapped  # the maps the browser draws, likewise
    mapped[-1] = {"role": "assistant", "content": f'{HEAT_MAP_HTML}" style="position:relative"></div>\n\n*Where the model looked*'}
    assert mark_stopped(mapped)[0] == mapped
    # The server had sent more than the browser showed: marked as far as the server had sent it;
    # never text that does not go on from the browser's (another answer's).
    assert mark_stopped([*asked, {"role": "assistant", "content": "blu"}], sent="blue ci")[0][-1]["content"] == (
        f"blue ci {STOPPED}"
    )
    assert mark_stopped([*asked, {"role": "assistant", "content": "blu"}], sent="red")[0][-1]["content"] == f"blu {STOPPED}"
    assert mark_stopped(asked, sent="bl")[0][-1] == {"role": "assistant", "content": f"bl {STOPPED}"}
    # A stopped answer is not handed to the model as a turn; the next complete one is.
    history = [*chat, {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "red"}]
    assert conversation_context(history) == (image_file, [Turn("And now?", "red")])


def test_an_answer_stopped_as_its_last_words_arrive_comes_back_marked(engine: ChatEngine, image_file: str) -> None:
    """Words sent just before Stop can reach the browser after its mark, and Gradio then hands the
    next turn the answer unmarked. The server remembers what Stop cut short, per browser session:
    the answer is marked again in the chat and kept out of the model's history."""
    import gradio as gr

    from mmchat.serving.ui import STOPPED

    demo = build_demo(engine, examples=[])
    question, follow_up = "What color is the circle?", "How many squares are there?"
    session = gr.Request(session_hash="browser-1")
    answering = demo.fn({"text": question, "files": [image_file]}, [], *GREEDY.values(), request=session)
    next(answering)
    cut = next(answering)  # the words so far; then Stop
    answering.close()
    assert isinstance(cut, str) and cut

    unmarked = [{"role": "user", "content": [{"path": image_file}, question]}, {"role": "assistant", "content": cut}]
    other = as_ui_history(demo, unmarked)  # another browser's chat, alike: not this session's to mark
    list(demo.fn({"text": follow_up, "files": []}, other, *GREEDY.values(), request=gr.Request(session_hash="browser-2")))
    assert conversation_context(other)[1] == [Turn(question, cut)]  # left as it came

    # The browser's copy may also lag behind what was sent: marked as far as it was sent.
    behind = [unmarked[0], {"role": "assistant", "content": cut[:-1]}] if len(cut) > 1 else unmarked
    history = as_ui_history(demo, behind)
    reply = list(demo.fn({"text": follow_up, "files": []}, history, *GREEDY.values(), request=session))[-1]
    assert history[-1]["content"] == f"{cut} {STOPPED}"  # marked where the chat shows it
    alone = engine.answer(image_file, follow_up, [], GenerationSettings(**GREEDY))
    assert reply[0] == alone  # answered as a first question: the cut answer is not a turn


def test_stop_pressed_after_the_heat_map_arrived_leaves_the_answer_as_it_is(engine: ChatEngine, image_file: str) -> None:
    """Stop can reach the server just after a short answer ended and its heat-map was shown: the
    chat stays as it is. (It used to put the heat-map's caption, marked stopped, in the picture's place.)"""
    import gradio as gr

    demo = build_demo(engine, examples=[])
    stop = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "stop")
    question = "What color is the circle?"
    session = gr.Request(session_hash="browser-3")
    reply = list(demo.fn({"text": question, "files": [image_file]}, [], *GREEDY.values(), request=session))[-1]
    asked = [{"role": "user", "content": [{"path": image_file}, question]}]
    answer, heat_map = reply[:2]  # (this tiny model's answers also get a note: an answer usually ends with its map)
    shown = as_ui_history(demo, [*asked, {"role": "assistant", "content": answer}, heat_map])
    texts = [item.get("text", "") for item in shown[-1]["content"] if isinstance(item, dict)]
    assert texts and texts[0].startswith(HEAT_MAP_HTML)  # the heat-map, which the browser draws
    assert stop(shown, session) == (shown, shown)


def test_notes_follow_the_answer_and_stay_out_of_the_history(engine: ChatEngine, tmp_path: Path) -> None:
    frames = [Image.new("RGB", (48, 48), c) for c in ((200, 30, 30), (30, 30, 200))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    demo = build_demo(engine, examples=[])
    reply = list(demo.fn({"text": "What color?", "files": [str(path)]}, [], 1, False, 0.7))[-1]
    notes = [m for m in reply if isinstance(m, str) and m.startswith("ℹ️")]
    assert notes == [
        "ℹ️ The image has several frames (animated or multi-page); I answered about its first frame.",
        "ℹ️ The answer was cut at Max new tokens (1); raise it under Generation settings for a longer one.",
    ]
    history = [{"role": "user", "content": [{"path": str(path)}, "What color?"]}]
    history += [m if isinstance(m, dict) else {"role": "assistant", "content": m} for m in reply]
    assert conversation_context(history)[1] == [Turn("What color?", reply[0])]
