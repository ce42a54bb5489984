"""The Gradio chat UI: builds components and calls the engine, nothing else.

    demo = build_demo(ChatEngine.from_pretrained("models/mmchat-shapes"))
    demo.queue(default_concurrency_limit=64, max_size=64).launch(max_threads=72, css=CSS)

One message holds an image and a question (`gr.MultimodalTextbox`). Follow-up questions without
an image are about the most recent image of the conversation; a new image starts a new context,
so turns about the previous image are not given to the model. The conversation itself lives in
`gr.ChatInterface`'s per-session state, never in module globals.

The `/chat` API endpoint takes `message={"text": ..., "files": [handle_file(path)]}` and the
generation settings, and returns a list: first the answer text (or a "⚠️ ..." message for input
it refuses), then, where the model has one, the attention map as an assistant message whose
content is an HTML snippet, then the caption: the image (its upload's URL) with a small heat layer
over it, a PNG data URI, which the browser stretches over the image (`overlay.overlay_html`); for
a description, one such map per object it named, captioned (`panels.panels_html`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr
from gradio.components.multimodal_textbox import MultimodalData
from gradio.processing_utils import save_pil_to_cache
from gradio.utils import get_upload_folder
from pydantic import model_validator

from .engine import UNANSWERABLE, ChatEngine, ChatInputError, GenerationSettings, ImageInputError, ServingError, Turn
from .images import NOTES
from .overlay import overlay_html
from .panels import panel_sheet, panels_html
from .questions import clean_question

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
# Replies that are not answers start with this, so they are never handed back to the model.
NOTICE = "⚠️"
# Notes after an answer (first frame only, cut by the token limit) start with this.
INFO = "ℹ️"
# Appended to an answer the user stopped; such an answer is not given back to the model either.
STOPPED = "*(stopped)*"
# Uploads above this are refused by Gradio, before any of our code runs, with a message naming it.
MAX_FILE_SIZE = "50mb"
OVERLAY_ALT = "Where the model looked: its cross-attention over the image (bright = attended)"
# Shown under the overlay: Gradio's chat does not display an image's alt text.
OVERLAY_CAPTION = "*Where the model looked (bright = attended)*"
# The heat-map messages the browser draws (`_heat_map_message`, `_panels_message`) start with this.
HEAT_MAP_HTML = '<div class="mmchat-heat'
# The app's CSS (`launch(css=CSS)`). Gradio draws a message's HTML at 80 % opacity (its
# `.message-wrap .prose.chatbot.md`), which washed the heat-map out: 22 levels off the picture in a
# flat part of it. A message with a map is drawn as it is.
CSS = ".message-wrap .prose.chatbot.md:has(.mmchat-heat) { opacity: 1; }"
# For an engine that draws the heat-map itself (the serving benchmark's baseline app), JPEG: a
# smooth heat-map over a picture, which PNG compresses slowly and badly (Gradio's encoder, best of
# 7: a 224-px overlay 14.5 ms and 74 KB as PNG, 0.1 ms and 5 KB as JPEG; the cheetah example's
# 502x343 one 63 ms and 205 KB, 0.4 ms and 21 KB).
OVERLAY_FORMAT = "jpeg"
MAX_NEW_TOKENS = 256
# The note shown instead of `unanswerable` starts with this; like NOTICE, it is never given back to the model.
BOUNDARY = INFO
PANELS_ALT = "Where the model looked for each object it named: one small attention map per object"
PANELS_CAPTION = "*Where the model looked for each object it named (bright = attended)*"
# How to serve a model that knows photos (docs/families.md).
GENERAL_MODELS = (
    "For photos and other pictures, serve a general model: `python app.py --model Salesforce/blip-vqa-base` "
    "(BLIP VQA, runs on a CPU) or `python app.py --model meta-llama/Llama-3.2-11B-Vision-Instruct "
    "--quantization nf4` (Llama 3.2 Vision, on a GPU); on a Space, set the variable `MMCHAT_MODEL` to "
    "one of them."
)
# Uploads and overlays are deleted a day after they were made (checked hourly): long enough for
# any conversation that still refers to them, short enough that a public Space does not fill up.
DELETE_CACHE = (3600, 86400)


def zero_gpu() -> bool:
    """Whether this is a Space on ZeroGPU hardware (which sets SPACES_ZERO_GPU): there a GPU is lent
    only to `spaces.GPU` calls, so the engine must run its steps inline, on the caller's thread."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def on_gpu(fn: Callable) -> Callable:
    """`fn` inside `spaces.GPU` where the `spaces` package is installed (on Hugging Face Spaces).

    On ZeroGPU hardware a GPU is attached to the Space only while such a function runs; on any
    other hardware `spaces.GPU` does nothing, and off Spaces (no `spaces`) `fn` is returned as is.
    """
    try:
        spaces = importlib.import_module("spaces")
    except ImportError:
        return fn
    return spaces.GPU(fn)


def load_examples(folder: Path = ASSETS) -> list[dict[str, Any]]:
    """Multimodal example messages from `folder/examples.json`; none when it is missing."""
    index = folder / "examples.json"
    if not index.exists():
        return []
    return [
        {"text": e["question"], "files": [str(folder / e["file"])]}
        for e in json.loads(index.read_text())
        if (folder / e["file"]).exists()
    ]


def _file_path(file: Any) -> str | None:
    """A file as the chat gives it (a path, a `{"path": ...}` dict, or a `{"file": {...}}` item)."""
    if isinstance(file, str):
        return file
    if isinstance(file, dict):
        if "file" in file:
            return _file_path(file["file"])
        return file.get("path")
    return None


def _items(content: Any) -> Iterator[tuple[str, str]]:
    """("text", text) and ("file", path) pairs of one message's content, in any form it comes in.

    The UI hands back normalized content (`[{"type": "text", ...}, {"type": "file", ...}]`), the
    API's session state keeps what the chat function produced (strings, `{"path": ...}` dicts),
    and components (the overlay) are skipped.
    """
    for item in content if isinstance(content, list | tuple) else [content]:
        if isinstance(item, str):
            yield "text", item
        elif isinstance(item, dict) and item.get("type") == "text":
            yield "text", item.get("text", "")
        elif isinstance(item, dict) and (path := _file_path(item)):
            yield "file", path


def conversation_context(history: list[dict[str, Any]]) -> tuple[str | None, list[Turn]]:
    """The most recent image of a chat and the question/answer turns asked about it since."""
    image: str | None = None
    turns: list[Turn] = []
    question: str | None = None
    for message in history:
        role = message.get("role") if isinstance(message, dict) else None
        for kind, value in _items(message.get("content") if role else None):
            if role == "user" and kind == "file":
                image, turns, question = value, [], None  # a new image starts a new context
            elif role == "user" and kind == "text":
                question = clean_question(value)
            elif role == "assistant" and kind == "text" and question is not None:
                if not value.startswith((NOTICE, BOUNDARY)) and not value.endswith(STOPPED):
                    turns.append(Turn(question, value))
                question = None
    return image, turns


def setting_slider(*args: Any, **kwargs: Any) -> gr.Slider:
    """A slider that hands its value to the chat function as sent, unrounded and unchecked.

    `gr.Slider` checks and rounds in preprocessing, before the chat function runs: an API caller's
    `null` there is a TypeError, answered "The upstream Gradio app has raised an exception".
    `GenerationSettings.from_request` checks every setting instead, with a message in the chat.
    (Set on the instance: a subclass of a Gradio component writes a `.pyi` file beside this one.)
    """
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = lambda payload: payload
    return slider


class LenientMessageData(MultimodalData):
    """The textbox's data model, lenient where an API caller is careless: a plain string is the
    question, a missing or non-text "text" becomes text, a "files" that is not a list is ignored.

    Gradio validates a message against the data model before the chat function runs; a failure
    there would reach the caller as "The upstream Gradio app has raised an exception".
    """

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return {"text": value if isinstance(value, str) else str(value), "files": []}
        value = dict(value)
        text = value.get("text")
        value["text"] = text if isinstance(text, str) else ("" if text is None else str(text))
        if not isinstance(value.get("files", []), list):
            value["files"] = []
        return value


def lenient_textbox(**kwargs: Any) -> gr.MultimodalTextbox:
    """A `gr.MultimodalTextbox` whose API input is `LenientMessageData`; `null` is an empty message.

    (Set on the instance: a subclass of a Gradio component writes a `.pyi` file beside this one.)
    """
    textbox = gr.MultimodalTextbox(**kwargs)
    textbox.data_model = LenientMessageData
    preprocess = textbox.preprocess
    textbox.preprocess = lambda payload: preprocess(LenientMessageData(text="") if payload is None else payload)
    return textbox


def _message_parts(message: Any) -> tuple[list[str], Any]:
    """(file paths, text) of a message as the textbox or an API caller sends it."""
    if isinstance(message, str):  # an API caller's plain question
        return [], message
    if not isinstance(message, dict):
        raise ChatInputError('The message must be {"text": ..., "files": [...]}.')
    files = message.get("files") or []
    return [p for p in map(_file_path, files if isinstance(files, list) else [files]) if p], message.get("text")


def _hit_token_limit(engine: ChatEngine, answer: str, settings: GenerationSettings) -> bool:
    """Whether generation ran out of Max new tokens rather than ending the answer itself.

    Re-tokenizes the answer: an answer the model ended spends one of its tokens on the end token,
    so it is at most `max_new_tokens - 1` long.
    """
    tokenizer = getattr(engine.adapter, "tokenizer", None)
    if tokenizer is None:
        return False
    return len(tokenizer(answer, add_special_tokens=False)["input_ids"]) >= settings.max_new_tokens


def _last_text(message: dict[str, Any]) -> str:
    """A message's last piece of text ("" if it has none)."""
    texts = [v for kind, v in _items(message.get("content")) if kind == "text"]
    return texts[-1] if texts else ""


def mark_stopped(
    chat: list[dict[str, Any]], sent: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chat with its last, stopped answer marked: the partial text and STOPPED, never an empty
    bubble. `sent`: the answer as the server last sent it, which can be ahead of the browser's (its
    last words still on their way); shown instead where it goes on from what the browser has."""
    chat = list(chat or [])
    last = chat[-1] if chat else None
    if last is None or last.get("role") != "assistant":
        chat.append({"role": "assistant", "content": f"{sent or ''} {STOPPED}".strip()})
        return chat, chat
    text = _last_text(last)
    # A heat-map comes with the whole answer: a picture, or the map the browser draws.
    pictured = text.startswith(HEAT_MAP_HTML) or any(kind == "file" for kind, _ in _items(last.get("content")))
    if pictured or text.startswith((NOTICE, INFO)) or text.endswith(STOPPED):
        return chat, chat  # the answer had ended (or was marked) before Stop arrived
    if sent and sent.startswith(text):
        text = sent
    chat[-1] = {**last, "content": f"{text} {STOPPED}".strip()}
    return chat, chat


def remark_stopped(history: list[dict[str, Any]], answer: str | None) -> None:
    """Mark again, in place, the answer Stop cut short where this turn's history brings it back
    unmarked (whole or in part): `answer` is that answer as the server last sent it.

    Stop marks the answer the browser shows (`mark_stopped`), but words the server sent just before
    Stop can reach the browser after the mark, and Gradio then keeps the chat as they left it: the
    mark gone, and the cut answer given to the model as a whole one. The history's messages are the
    chat's own (Gradio copies the list, not the messages), so marking here shows in the chat too."""
    last = history[-1] if history else None
    if not answer or not isinstance(last, dict) or last.get("role") != "assistant":
        return
    text = _last_text(last)
    if text and answer.startswith(text):  # so neither marked already, nor a notice
        last["content"] = f"{answer} {STOPPED}"  # as far as it was sent, as Stop showed it


def _heat_map_message(engine: ChatEngine, image: str, question: str, answer: str, turns: list[Turn]) -> dict | None:
    """The attention map as a chat message the browser draws: the user's image, which Gradio's
    upload folder serves already, with a small heat layer over it (`overlay_html`); or None.
    Drawing the picture on the server, saving it and having each browser fetch it cost a quarter
    of the app's answers at 16 users: 38.1 against 50.6 answers/s this way (`overlay_html`)."""
    try:
        grid = engine.attention_grid(image, question, answer, turns)
        if grid is None:
            return None
        size = engine.check(image, question)[0].size  # as read: EXIF-turned, as the browser shows it
    except Exception:  # the map is an extra: never lose the answer because it failed
        logger.exception("attention map failed")
        return None
    return {"role": "assistant", "content": f"{overlay_html(_upload_url(image), size, grid, OVERLAY_ALT)}\n\n{OVERLAY_CAPTION}"}


def _upload_url(path: str) -> str:
    """Where the page fetches an upload of this chat from: Gradio's file route, relative to the page
    (so it holds under a root path, as on a Space behind its proxy)."""
    return f"gradio_api/file={quote(path)}"


def _overlay_message(
    engine: ChatEngine, image: str, question: str, answer: str, turns: list[Turn], image_format: str
) -> dict | None:
    """The attention overlay as a chat message holding an image file, or None: for an engine with
    no `attention_grid` (the serving benchmark's baseline app, as the app was)."""
    try:
        overlay = engine.attention_overlay(image, question, answer, turns)
    except Exception:  # the picture is an extra: never lose the answer because it failed
        logger.exception("attention overlay failed")
        return None
    if overlay is None:
        return None
    # Written straight into Gradio's upload folder: served from there and removed by `delete_cache`.
    path = save_pil_to_cache(overlay, cache_dir=get_upload_folder(), name="attention", format=image_format)
    return {"role": "assistant", "content": [{"path": path, "alt_text": OVERLAY_ALT}, OVERLAY_CAPTION]}


def boundary_note(engine: ChatEngine, because: str | None = None) -> str:
    """What the app shows for `unanswerable`: what this model knows, questions it can answer, and
    where to go for photos. The world and the examples come from the checkpoint's gate.

    `because` "question" (`ChatEngine.declined_because`): the picture is of the model's world and
    the question is what it cannot read, so the note says so and leaves out where to go for photos."""
    gate = getattr(engine.adapter, "world_gate", None)
    config = gate.config if gate is not None else {}
    about = config.get("about", "the pictures it was trained on")
    examples = config.get("examples", [])
    if because == "question":
        lines = [
            f"{BOUNDARY} **This model can't answer that question.** The picture is of its world, {about}; "
            "but it answers only a few kinds of question about it, asked in the forms it was taught, "
            "rather than guess at others."
        ]
    else:
        lines = [
            f"{BOUNDARY} **This model can't answer that about this picture.** It knows one small world: {about}. "
            "It declines photos, drawings, charts, text and questions about anything else, rather than guess."
        ]
    if examples:
        lines.append("It can answer, for example: " + " · ".join(f"*{q}*" for q in examples))
    if because != "question":
        lines.append(GENERAL_MODELS)
    return "\n\n".join(lines)


def _panels_message(engine: ChatEngine, image: str, question: str, answer: str, turns: list[Turn]) -> dict | None:
    """For a description: one small attention map per object it named, captioned, for the browser
    to draw (`panels_html`); from an engine that only draws them, as one captioned picture."""
    if hasattr(engine, "object_grids"):
        try:
            grids = engine.object_grids(image, question, answer, turns)
            if not grids:
                return None
            size = engine.check(image, question)[0].size
        except Exception:  # an extra, like the map
            logger.exception("object maps failed")
            return None
        return {"role": "assistant", "content": f"{panels_html(_upload_url(image), size, grids)}\n\n{PANELS_CAPTION}"}
    if not hasattr(engine, "object_overlays"):
        return None
    try:
        panels = engine.object_overlays(image, question, answer, turns)
    except Exception:  # an extra, like the overlay
        logger.exception("object panels failed")
        return None
    if not panels:
        return None
    # PNG: the sheet's captions are text, which JPEG would blur.
    path = save_pil_to_cache(panel_sheet(panels), cache_dir=get_upload_folder(), name="objects", format="png")
    return {"role": "assistant", "content": [{"path": path, "alt_text": PANELS_ALT}, PANELS_CAPTION]}


def _description(engine: ChatEngine) -> str:
    adapter = engine.adapter
    lines = [
        f"**Model:** `{engine.describe()}`",
        (
            "Attach an image and type a question in the same message. Follow-up questions without "
            "an image are about the last image; a new image starts a new conversation about it."
        ),
    ]
    if not adapter.multi_turn:
        lines.append(
            "**This model answers each question on its own:** earlier questions and answers are not "
            "given to it, so refer to things by name rather than “it”."
        )
    if getattr(adapter, "shows_attention", False):
        lines.append("Under each answer: where the model looked while answering (bright = attended).")
    elif getattr(adapter, "remote", False):
        lines.append(
            "**Answers come from a model server**, which sends back text only: there is no picture of "
            "where the model looked."
        )
    return "\n\n".join(lines)


def build_demo(
    engine: ChatEngine, examples: list[dict[str, Any]] | None = None, overlay_format: str = OVERLAY_FORMAT
) -> gr.Blocks:
    """The chat app around `engine` (anything with `stream`, `attention_overlay`, `describe`, `adapter`).

    `examples` are multimodal messages (`{"text", "files"}`); by default those in `assets/`.
    `overlay_format`: the file format the heat-map is saved in (JPEG; the serving benchmark's
    baseline app keeps the PNG it had). Call `.queue(...)` and `.launch()` on the result.
    """
    examples = load_examples() if examples is None else examples
    defaults = GenerationSettings()
    # Browser session -> the answer streaming there, as last sent (`mark_stopped`); an answer that
    # ends is taken out, so one left behind is the answer Stop cut short (`remark_stopped`).
    streaming: OrderedDict[str, str] = OrderedDict()

    def respond(
        message: Any,
        history: list[dict[str, Any]],
        max_new_tokens: Any,
        do_sample: Any,
        temperature: Any,
    ) -> Iterator[str | list[Any]]:
        """Answer a question about an image; streams the text, then adds the attention overlay.

        Everything a caller sends is checked first (settings, question, image: a fast, shrinking
        decode), so that a refusal costs no generation and never raises a generic error.
        """
        try:
            settings = GenerationSettings.from_request(max_new_tokens, do_sample, temperature, MAX_NEW_TOKENS)
            files, text = _message_parts(message)
            image, turns = (files[-1], []) if files else conversation_context(history)
            picture, question = engine.check(image, text)
        except (ChatInputError, ImageInputError) as e:
            # Shown in the chat rather than as an error toast: the user can fix it and carry on.
            yield [f"{NOTICE} {e}"]
            return
        notes = list(picture.info.get(NOTES, ()))
        answer = ""
        try:
            # closing(): when Stop cancels this generator, the engine's is closed at once, which
            # ends its generate thread, rather than whenever it is garbage-collected.
            with closing(engine.stream(image, question, turns, settings)) as stream:
                for answer in stream:
                    yield answer
        except (ChatInputError, ImageInputError, ServingError) as e:
            # Shown in the chat rather than as an error toast: the user can fix it (or retry) and carry on.
            # A partial answer stays above the notice: nothing the user saw is lost.
            yield [answer, f"{NOTICE} {e}"] if answer else [f"{NOTICE} {e}"]
            return
        if not answer:
            yield [f"{NOTICE} The model gave an empty answer; try rephrasing, or switch sampling on."]
            return
        if answer == UNANSWERABLE:  # a note, not an answer, and no heat-map under it
            because = engine.declined_because(image, question) if hasattr(engine, "declined_because") else None
            yield [boundary_note(engine, because), *(f"{INFO} {note}" for note in notes)]
            return
        if _hit_token_limit(engine, answer, settings):
            notes.append(
                f"The answer was cut at Max new tokens ({settings.max_new_tokens}); raise it under "
                "Generation settings for a longer one."
            )
        # A description gets a map per object it named; any other answer one map.
        overlay = _panels_message(engine, image, question, answer, turns)
        if overlay is None and hasattr(engine, "attention_grid"):
            overlay = _heat_map_message(engine, image, question, answer, turns)
        elif overlay is None:
            overlay = _overlay_message(engine, image, question, answer, turns, overlay_format)
        yield [answer, *([overlay] if overlay else []), *(f"{INFO} {note}" for note in notes)]

    # All GPU work of a turn (generation and the attention picture) happens inside `respond`.
    answer_on_gpu = on_gpu(respond)

    def chat(
        message: Any,
        history: list[dict[str, Any]],
        max_new_tokens: Any,
        do_sample: Any,
        temperature: Any,
        request: gr.Request | None = None,
    ) -> Iterator[str | list[Any]]:
        """`respond`, keeping per browser session the answer as it streams, which Stop (or a closed
        page) leaves behind (`mark_stopped`, `remark_stopped`). Apart from the GPU call: the request
        stays here."""
        session = getattr(request, "session_hash", None)
        remark_stopped(history, streaming.pop(session, None) if session else None)
        try:
            with closing(answer_on_gpu(message, history, max_new_tokens, do_sample, temperature)) as replies:
                for sent in replies:
                    if session and isinstance(sent, str):
                        streaming[session] = sent
                        streaming.move_to_end(session)
                        while len(streaming) > 4096:  # sessions whose page closed mid-answer
                            streaming.popitem(last=False)
                    else:  # a list: the answer has ended
                        streaming.pop(session, None)
                    yield sent
        except Exception:  # failed, not cut short (Stop is a GeneratorExit, not an Exception)
            streaming.pop(session, None)
            raise

    def stop(chat_shown: list[dict[str, Any]], request: gr.Request | None = None) -> tuple[list, list]:
        """Stop pressed: the answer marked as far as the server had sent it (`mark_stopped`)."""
        session = getattr(request, "session_hash", None)
        return mark_stopped(chat_shown, streaming.get(session) if session else None)

    textbox = lenient_textbox(
        # Named as well as "image": some pickers do not count HEIC/AVIF as images.
        file_types=["image", ".heic", ".heif", ".avif"],
        file_count="single",
        sources=["upload"],
        placeholder="Attach an image and ask a question about it…",
        # ChatInterface shows the stop button only while answering, and only if the textbox has one.
        stop_btn=True,
        autofocus=True,
    )
    chatbot = gr.Chatbot(
        label="Chat",
        height=520,
        placeholder="Upload an image and ask about it, or pick an example below.",
    )
    setting_inputs = [
        setting_slider(1, MAX_NEW_TOKENS, value=defaults.max_new_tokens, step=1, label="Max new tokens"),
        gr.Checkbox(value=defaults.do_sample, label="Sample", info="Off: greedy decoding (deterministic)."),
        setting_slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature", info="Used when sampling."),
    ]
    demo = gr.ChatInterface(
        chat,
        multimodal=True,
        chatbot=chatbot,
        textbox=textbox,
        additional_inputs=setting_inputs,
        additional_inputs_accordion=gr.Accordion("Generation settings", open=True),
        # Lists of one message: with additional inputs, ChatInterface wants an input list per example.
        examples=[[e] for e in examples] or None,
        # Generation at start-up would slow every restart of the app, so examples run on click.
        cache_examples=False,
        title="mmchat: ask about an image",
        description=_description(engine),
        api_name="chat",
        api_description=(
            "Answer a question about an image. Returns a list: the answer text (or a '⚠️ ...' "
            "message for refused input), then, when the model has one, the attention map: an HTML "
            "snippet of the image with the map over it as a PNG data URI (for a description, one "
            "such map per object it named)."
        ),
        delete_cache=DELETE_CACHE,
        fill_height=True,
        # Conversations kept in the browser's local storage, listed beside the chat, each deletable.
        save_history=True,
    )
    # Saved chats are encrypted in the browser with a key from the page's config, random per start
    # by default: an app restart would then lose them all. The key is public either way (it is in
    # the config), so a fixed one costs nothing and keeps the chats across restarts.
    demo.saved_conversations.secret = "mmchat-saved-conversations"
    with demo:
        # Stop cancels the answer; the mark says why it is short (and keeps it out of the history).
        demo.textbox.stop(stop, [demo.chatbot], [demo.chatbot, demo.chatbot_state], queue=False)
    return demo
