"""The chat engine: (image, question, history, settings) in, the answer out as it streams.

It knows nothing of Gradio; the UI, the evaluation CLI and the tests all call it the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .families import FamilyAdapter, ServingError, Turn
from .gate import UNANSWERABLE
from .images import ImageInputError, load_image
from .loading import LoadError, load_model
from .overlay import overlay_attention
from .panels import object_panels, object_phrases
from .questions import MAX_QUESTION_CHARS, check_question
from .settings import ChatInputError, GenerationSettings

# What callers (the UI, the evaluation CLI) need, from one place.
__all__ = [
    "MAX_QUESTION_CHARS",
    "ChatEngine",
    "ChatInputError",
    "GenerationSettings",
    "ImageInputError",
    "LoadError",
    "ServingError",
    "Turn",
    "UNANSWERABLE",
]


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> bool:
        return self.event.is_set()


class ChatEngine:
    """Answers questions about one image at a time with a loaded family adapter."""

    def __init__(self, adapter: FamilyAdapter, timeout_s: float = 300.0):
        self.adapter = adapter
        self.timeout_s = timeout_s

    @classmethod
    def from_pretrained(cls, source: str | Path, quantization: str = "auto", device: str = "auto") -> ChatEngine:
        return cls(load_model(source, quantization=quantization, device=device))

    def describe(self) -> str:
        a = self.adapter
        turns = "multi-turn" if a.multi_turn else "each question answered on its own"
        source = getattr(a, "source", "?")
        # A local folder is named, not its full path (which the public page need not show).
        name = Path(source).name if Path(source).is_dir() else source
        return f"{name} · {a.family} · {getattr(a, 'quantization', '?')} on {getattr(a, 'device_name', a.device)} · {turns}"

    def check(self, image: Any, question: str | None) -> tuple[Image.Image, str]:
        """Validate the inputs; raises ChatInputError (or ImageInputError) with a readable message."""
        if image is None:
            raise ChatInputError("Please upload an image first, then ask about it.")
        question = check_question(question)
        return load_image(image), question

    def _asked(self, image: Image.Image, question: str, history: list[Turn]) -> tuple[str | None, list[Turn]]:
        """What the model is asked, and the history it sees: the adapter's world gate (if its
        checkpoint has one) may decline (None: the answer is `unanswerable`) or reword."""
        gate = self.adapter.world_gate
        if gate is None:
            return question, history
        return gate.ask(image, question), gate.history(history)

    def _fit_history(self, image: Image.Image, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        """Inputs with as much history as fits the context window, oldest turns dropped first."""
        history = list(history) if self.adapter.multi_turn else []
        limit = self.adapter.max_context_tokens()
        while True:
            inputs = self.adapter.inputs(image, question, history)
            if limit is None or inputs["input_ids"].shape[1] < limit or not history:
                break
            history = history[1:]
        if limit is not None and inputs["input_ids"].shape[1] >= limit:
            raise ChatInputError("That question is too long for this model's context; please shorten it.")
        return inputs

    def stream(
        self,
        image: Any,
        question: str,
        history: list[Turn] | None = None,
        settings: GenerationSettings | None = None,
        stop_event: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the answer so far, growing, until generation ends or `stop_event` is set."""
        image, question = self.check(image, question)
        settings = settings or GenerationSettings()
        question, history = self._asked(image, question, history or [])
        if question is None:
            yield UNANSWERABLE
            return
        stop_event = stop_event or threading.Event()
        if self.adapter.streams_itself:
            yield from self._stream_from_adapter(image, question, history, settings, stop_event)
            return
        inputs = self._fit_history(image, question, history)
        streamer = TextIteratorStreamer(
            self.adapter.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.timeout_s
        )
        kwargs = dict(
            **inputs,
            **self.adapter.generate_kwargs(),
            **settings.generate_kwargs(),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop_event)]),
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.adapter.model.generate(**kwargs)
            except BaseException as e:  # surfaced in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        try:
            for piece in streamer:
                if stop_event.is_set():  # Stop pressed: show nothing more, even tokens already made
                    break
                text += piece
                yield text.strip()
        finally:
            # The consumer stopped early (Stop button, closed tab): end generation, don't leak it.
            stop_event.set()
            thread.join(timeout=self.timeout_s)
        if errors:
            raise errors[0]

    def _stream_from_adapter(
        self, image: Image.Image, question: str, history: list[Turn], settings: GenerationSettings, stop_event: threading.Event
    ) -> Iterator[str]:
        """`stream` for an adapter that streams itself (`FamilyAdapter.stream_answer`: e.g. a remote server).

        The one-at-a-time path: the adapter yields pieces, this joins them. The server, not the
        engine, fits the history to its context (it answers an error if it cannot).
        """
        history = list(history) if self.adapter.multi_turn else []
        pieces = self.adapter.stream_answer(image, question, history, settings.generate_kwargs(), stop_event)
        text = ""
        try:
            for piece in pieces:
                if stop_event.is_set():  # Stop pressed: show nothing more
                    break
                text += piece
                yield text.strip()
        finally:
            stop_event.set()
            pieces.close()  # ends the request when the consumer stopped early

    def answer(self, image: Any, question: str, history: list[Turn] | None = None, settings: GenerationSettings | None = None) -> str:
        text = ""
        for text in self.stream(image, question, history, settings):  # noqa: B007 (the last one is the answer)
            pass
        return text

    def answer_batch(self, images: list[Any], questions: list[str], settings: GenerationSettings | None = None) -> list[str]:
        """Answer many single-turn questions at once (evaluation): one padded generate call."""
        settings = settings or GenerationSettings()
        checked = [self.check(image, question) for image, question in zip(images, questions)]
        asked = [(image, self._asked(image, question, [])[0]) for image, question in checked]
        answers = [UNANSWERABLE] * len(asked)
        kept = [i for i, (_, question) in enumerate(asked) if question is not None]
        if kept:
            found = self.adapter.answer_batch(
                [asked[i][0] for i in kept], [asked[i][1] for i in kept], settings.generate_kwargs()
            )
            for i, answer in zip(kept, found):
                answers[i] = answer
        return answers

    def attention_overlay(self, image: Any, question: str, answer: str, history: list[Turn] | None = None) -> Image.Image | None:
        """The image with the model's cross-attention for `answer` drawn over it, where the family has it."""
        if not self.adapter.shows_attention or not answer or answer == UNANSWERABLE:
            return None
        image, question = self.check(image, question)
        question, history = self._asked(image, question, history or [])
        if question is None:
            return None
        inputs = self._fit_history(image, question, history)
        answer_ids = self.adapter.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        grid = self.adapter.attention_grid(inputs, answer_ids)
        return None if grid is None else overlay_attention(image, np.asarray(grid))

    def object_overlays(
        self, image: Any, question: str, answer: str, history: list[Turn] | None = None
    ) -> list[tuple[str, Image.Image]]:
        """For a description: (phrase, overlay) per object it names, each from the attention of
        that phrase's tokens; [] when the answer names no object or the family shows no attention."""
        token_attention = getattr(self.adapter, "token_attention", None)
        if token_attention is None or not object_phrases(answer):
            return []
        image, question = self.check(image, question)
        question, history = self._asked(image, question, history or [])
        if question is None:
            return []
        inputs = self._fit_history(image, question, history)
        encoded = self.adapter.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
        grids = token_attention(inputs, torch.tensor(encoded["input_ids"]))
        return [] if grids is None else object_panels(image, answer, encoded["offset_mapping"], grids)
