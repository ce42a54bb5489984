"""The chat engine: (image, question, history, settings) in, the answer out as it streams.

It knows nothing of Gradio; the UI, the evaluation CLI and the tests all call it the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .answer_tree import question_kind
from .cache import LRUBytes, image_key
from .families import FamilyAdapter, ServingError, Turn
from .gate import UNANSWERABLE
from .images import ImageInputError, load_image
from .loading import LoadError, load_model
from .overlay import overlay_attention
from .panels import object_grids, object_panels, object_phrases
from .questions import MAX_QUESTION_CHARS, check_question
from .request import Request
from .scheduler import Scheduler
from .settings import ChatInputError, GenerationSettings

# What callers (the UI, the evaluation CLI) need, from one place.
__all__ = [
    "MAX_QUESTION_CHARS",
    "ChatEngine",
    "ChatInputError",
    "GenerationSettings",
    "ImageInputError",
    "LoadError",
    "Reply",
    "ServingError",
    "Turn",
    "UNANSWERABLE",
]


def check_request(image: Any, question: str | None) -> str:
    """The question as checked (`check_question`), once there is an image to ask about."""
    if image is None:
        raise ChatInputError("Please upload an image first, then ask about it.")
    return check_question(question)


logger = logging.getLogger(__name__)

READS_KEPT = 32  # images read (`ChatEngine._read`) kept for their next turn: up to 3.8 MB each
LANES_KEPT = 4096  # images whose lane (`ChatEngine._lane`) is remembered: a conversation stays on its lane


class ChatEngine:
    """Answers questions about images for many users at once with a loaded family adapter.

    Every request goes to a scheduler thread that owns the model (`scheduler.Scheduler`): the
    batched families share forward passes, the others are answered one at a time there (a family
    whose forwards keep no state between calls may have a second look run beside them). With
    `threaded=False` there is no such thread: the callers' threads run the scheduler's rounds in
    turn while they wait (ZeroGPU hardware lends the GPU only to the caller's `spaces.GPU` call).

    `lanes`: schedulers side by side over the one model, for a family whose forwards may run beside
    each other (None: the family's `default_lanes`). Each conversation's image keeps to one lane,
    where its features and keys/values are cached; new images go to the lanes in turn. On a 2-core
    CPU a forward of this project's small model is mostly fixed cost and one lane leaves the second
    core half idle: two answered 16 and 32 users 12 % and 10 % faster than one, a lone user alike
    (docs/serving-measurements.md, "two lanes"). Where one big batch is cheapest (a GPU), one lane.
    """

    def __init__(
        self,
        adapter: FamilyAdapter,
        timeout_s: float = 300.0,
        max_batch: int = 64,
        max_waiting: int = 256,
        image_cache_bytes: int | None = None,
        prefix_cache_bytes: int = 128 << 20,
        record_attention: bool = True,
        threaded: bool = True,
        draft_tokens: int = 4,
        attention_cache_bytes: int = 32 << 20,
        lanes: int | None = 1,
    ):
        """`image_cache_bytes`: None keeps the family's own bound (`FamilyAdapter.image_cache_bytes`).
        `attention_cache_bytes`: the recorded maps kept for answers' heat-maps, asked for right after
        their answers. The shipped model's take 1.3 KB for a short answer and 16 KB for a description,
        so 32 MB holds about 25,000 short answers' or 2,000 descriptions'. (It kept 4,096 maps before,
        however large: up to 66 MB of descriptions.)"""
        self.adapter = adapter
        self.timeout_s = timeout_s
        self.max_waiting = max_waiting
        # A family that streams itself (a remote model, `stream_answer`) has no local model to own.
        self.schedulers: list[Scheduler] = []
        if not adapter.streams_itself:
            n = max(1, adapter.default_lanes() if lanes is None else lanes)
            if not (threaded and adapter.steps_side_by_side):  # forwards that may not run beside each other
                n = 1
            image_bytes = adapter.image_cache_bytes if image_cache_bytes is None else image_cache_bytes
            # The caches' bounds are the engine's: each lane holds its share of the conversations.
            self.schedulers = [
                Scheduler(
                    adapter,
                    max_batch=max_batch,
                    image_cache_bytes=image_bytes // n,
                    prefix_cache_bytes=prefix_cache_bytes // n,
                    record_attention=record_attention and adapter.records_attention,
                    threaded=threaded,
                    draft_tokens=draft_tokens,
                )
                for _ in range(n)
            ]
            for scheduler in self.schedulers:
                # An engine dropped without close() still ends its threads (each holds the model).
                weakref.finalize(self, scheduler.close_soon)
        # The first lane (the only one unless `lanes`): what runs `_on_model`'s calls.
        self.scheduler: Scheduler | None = self.schedulers[0] if self.schedulers else None
        self._lanes: OrderedDict[str, Scheduler] = OrderedDict()  # image key -> its lane (`_lane`)
        self._next_lane = 0
        # (image key, question and history as asked, answer) -> (A, N) cross-attention of each answer
        # token, from the answering pass. Keyed by the words, not the prompt's token ids: rebuilding
        # the prompt (chat template, tokenizer) to look a picture up took 0.37 of its 1.7 ms.
        # Bounded in bytes: a description's map (16 KB) is 13 times a short answer's (1.3 KB).
        self._attention = LRUBytes(attention_cache_bytes)
        self._attention_lock = threading.Lock()  # guards _verdicts, _unjudged, _reads and _lanes
        self._verdicts: OrderedDict[str, bool] = OrderedDict()  # image key -> the world gate's verdict
        self._unjudged: dict[str, Image.Image] = {}  # images waiting for a verdict (`_in_world`)
        self._gate_lock = threading.Lock()  # one thread at a time judges the images waiting
        # source (a path as it is now, or a PIL image) -> (its weak reference, the image read, its key)
        self._reads: OrderedDict[tuple, tuple[Any, Image.Image, str]] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls, source: str | Path, quantization: str = "auto", device: str = "auto", dtype: str = "auto", **kwargs: Any
    ) -> ChatEngine:
        return cls(load_model(source, quantization=quantization, device=device, dtype=dtype), **kwargs)

    def trace(
        self, wait: bool = True, done: Callable[[int, int, float], None] | None = None, unrecorded: bool | None = None
    ) -> threading.Thread | None:
        """Run the model's image encodes and forwards through traced graphs where its family can
        (`FamilyAdapter.trace`; a second or so a graph): now (`wait`), or on a thread of its own while
        the engine serves, each graph used as soon as it is ready; then `done(kept, tried, seconds)`.
        Answers are the same either way: a graph is kept only where it gives the eager forward's
        outputs bit for bit. `unrecorded`: also the forwards that record no heat-map (None: where
        this engine does not record)."""
        if unrecorded is None:
            unrecorded = self.scheduler is None or not self.scheduler.record_attention

        def run() -> None:
            start = time.perf_counter()
            try:
                kept, tried = self.adapter.trace(unrecorded)
            except Exception:  # the forwards stay eager: slower, not wrong
                logger.exception("tracing the forwards failed; they stay eager")
                kept, tried = 0, 0
            if done is not None:
                done(kept, tried, time.perf_counter() - start)

        if wait:
            run()
            return None
        thread = threading.Thread(target=run, name="mmchat-trace", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """End the scheduler threads (requests still queued get an error)."""
        for scheduler in self.schedulers:
            scheduler.close()

    def release(self, image: Any) -> None:
        """Free what is cached for `image` (its features, its conversations' keys/values)."""
        if self.schedulers:
            key = self._read(image)[1]
            for scheduler in self.schedulers:
                scheduler.release([key])

    def _lane(self, key: str) -> Scheduler:
        """The scheduler an image's turns go to: the one its conversation started on (its image and
        keys/values are cached there), a new image to the lanes in turn."""
        if len(self.schedulers) == 1:
            return self.schedulers[0]
        with self._attention_lock:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self.schedulers[self._next_lane % len(self.schedulers)]
                self._next_lane += 1
                self._lanes[key] = lane
                while len(self._lanes) > LANES_KEPT:
                    self._lanes.popitem(last=False)
            else:
                self._lanes.move_to_end(key)
            return lane

    def describe(self) -> str:
        a = self.adapter
        turns = "multi-turn" if a.multi_turn else "each question answered on its own"
        source = getattr(a, "source", "?")
        # A local folder is named, not its full path (which the public page need not show).
        name = Path(source).name if Path(source).is_dir() else source
        quantization = getattr(a, "quantization", "?")
        # Unquantized, the weights' precision is what there is to say.
        precision = getattr(a, "dtype_name", quantization) if quantization == "none" else quantization
        return f"{name} · {a.family} · {precision} on {getattr(a, 'device_name', a.device)} · {turns}"

    def check(self, image: Any, question: str | None) -> tuple[Image.Image, str]:
        """Validate the inputs; raises ChatInputError (or ImageInputError) with a readable message."""
        image, _, question = self._checked(image, question)
        return image, question

    def _checked(self, image: Any, question: str | None) -> tuple[Image.Image, str, str]:
        """`check`, and the image's `_image_key`."""
        question = check_request(image, question)
        return *self._read(image), question

    def _read(self, source: Any) -> tuple[Image.Image, str]:
        """`load_image(source)` and its `_image_key`, once per source: each turn of a conversation and
        its heat-map bring the same picture again (a path, or the same PIL image), and reading and
        hashing it again took 0.3-0.5 ms each time. A path is known again by its size and time of
        change; a PIL image by being the same object, so one changed in place after it was given is
        still read as it was (give a new image for a new picture)."""
        if isinstance(source, Image.Image):
            memo, ref = ("object", id(source)), weakref.ref(source)
        elif isinstance(source, str | Path) and Path(source).is_file():
            stat = Path(source).stat()
            memo, ref = ("path", str(source), stat.st_size, stat.st_mtime_ns), None
        else:
            memo = ref = None
        if memo is not None:
            with self._attention_lock:
                hit = self._reads.get(memo)
                if hit is not None and (hit[0] is None or hit[0]() is source):  # an id can be reused
                    self._reads.move_to_end(memo)
                    return hit[1], hit[2]
        image = load_image(source)
        key = self._image_key(image)
        if memo is not None:
            with self._attention_lock:
                self._reads[memo] = (ref, image, key)
                while len(self._reads) > READS_KEPT:
                    self._reads.popitem(last=False)
        return image, key

    def _asked(
        self, image: Image.Image, key: str, question: str, history: list[Turn]
    ) -> tuple[str | None, list[Turn]]:
        """What the model is asked, and the history it sees: the adapter's world gate (if its
        checkpoint has one) may decline (None: the answer is `unanswerable`) or reword."""
        gate = self.adapter.world_gate
        if gate is None:
            return question, history
        asked = gate.question(question)
        if asked is not None and not self._in_world(image, key):
            asked = None
        return asked, gate.history(history)

    def _in_world(self, image: Image.Image, key: str) -> bool:
        """The gate's verdict on an image (whose `_image_key` is `key`), once per image: every turn
        of a conversation, and its heat-map, ask again, and the pixel statistics cost more than a lookup.

        New images are judged together: a thread that needs a verdict leaves its image, then, one
        thread at a time, judges every image left so far (`images_in_world`), so a burst of new
        users makes one pass of numpy over all their images rather than one a thread, side by side
        with the scheduler's forwards."""
        with self._attention_lock:
            verdict = self._verdicts.get(key)
            if verdict is None:
                self._unjudged[key] = image
        if verdict is not None:
            return verdict
        gate = self.adapter.world_gate
        with self._gate_lock:
            with self._attention_lock:
                verdict = self._verdicts.get(key)
                batch, self._unjudged = self._unjudged, {}
            if verdict is None:
                batch.setdefault(key, image)  # judged by a thread before, then forgotten (the bound below): again
            if batch:
                try:
                    verdicts = dict(zip(batch, gate.images_in_world(list(batch.values()))))
                except Exception:
                    if len(batch) == 1:
                        raise
                    # A picture the gate cannot read fails the whole pass: then each thread judges
                    # its own image, so the error reaches that picture's user alone.
                    verdicts = {} if verdict is not None else {key: gate.image_in_world(image)}
                with self._attention_lock:
                    self._verdicts.update(verdicts)
                    while len(self._verdicts) > 4096:
                        self._verdicts.popitem(last=False)
                verdict = verdicts.get(key, verdict)
        return verdict

    def _prefetch(self, image: Image.Image, key: str) -> None:
        """A new image's encode started while the world gate judges it, not after: a burst of new
        users' images is judged in passes, one at a time, as they come, and the last of 16 reached
        the scheduler 45-60 ms after the first, the second core mostly idle meanwhile. An image the
        gate then declines was encoded for nothing (on the encode thread, a few ms) and stays cached
        until evicted or released."""
        if self.scheduler is None or self.adapter.world_gate is None:
            return
        with self._attention_lock:
            judged = key in self._verdicts
        if not judged:
            self._lane(key).prefetch(key, image)

    def declined_because(self, image: Any, question: str) -> str | None:
        """Why the world gate declines `question` about `image` (the answer `unanswerable`): "picture"
        when the image is not of the model's world, "question" when it is but the question fits no
        form the world's grammar knows; None when it is not declined (or the model has no gate)."""
        if self.adapter.world_gate is None:
            return None
        image, key, question = self._checked(image, question)
        if not self._in_world(image, key):
            return "picture"
        return "question" if self.adapter.world_gate.question(question) is None else None

    def _image_key(self, image: Image.Image) -> str:
        return image_key(image, str(getattr(self.adapter, "source", id(self.adapter))))

    def _trim(self, question: str, history: list[Turn], length: Any) -> tuple[Any, list[Turn]]:
        """As much history as fits the context window, oldest turns dropped first; `length(q, h)` -> (x, tokens)."""
        history = list(history) if self.adapter.multi_turn else []
        limit = self.adapter.max_context_tokens()
        while True:
            value, n = length(question, history)
            if limit is None or n < limit or not history:
                break
            history = history[1:]
        if limit is not None and n >= limit:
            raise ChatInputError("That question is too long for this model's context; please shorten it.")
        return value, history

    def _fit_history(self, image: Image.Image | None, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        """Model inputs with as much history as fits the context window, oldest turns dropped first
        (`image` None: the text's alone, for a family that `keeps_images`)."""

        def length(q: str, h: list[Turn]) -> tuple[dict[str, torch.Tensor], int]:
            inputs = self.adapter.inputs(image, q, h)
            return inputs, inputs["input_ids"].shape[1]

        return self._trim(question, history, length)[0]

    def _fit_prompt(self, question: str, history: list[Turn]) -> list[int]:
        """Prompt token ids with as much history as fits; the image is not processed for this."""

        def length(q: str, h: list[Turn]) -> tuple[list[int], int]:
            ids = self.adapter.prompt_ids(q, h)
            return ids, len(ids)

        return self._trim(question, history, length)[0]

    def submit(
        self,
        image: Any,
        question: str,
        history: list[Turn] | None = None,
        settings: GenerationSettings | None = None,
        stop_event: threading.Event | None = None,
    ) -> Reply:
        """Queue one answer; iterate the returned `Reply` for the text as it grows."""
        image, key, question = self._checked(image, question)
        return self._enqueue(image, key, question, history or [], settings, stop_event)

    def _enqueue(
        self,
        image: Image.Image,
        key: str,
        question: str,
        history: list[Turn],
        settings: GenerationSettings | None,
        stop_event: threading.Event | None,
    ) -> Reply:
        """`submit` for an image already checked, whose `_image_key` is `key`."""
        settings = settings or GenerationSettings()
        settings.generate_kwargs()  # checks them; raises ChatInputError
        if self.scheduler is None:
            raise ChatInputError("This model streams by itself; use `stream`.")
        if sum(scheduler.waiting() for scheduler in self.schedulers) >= self.max_waiting:
            raise ChatInputError("The server is busy answering other people; please try again in a minute.")
        if self.adapter.batched:
            prompt, inputs = self._fit_prompt(question, history), None
        else:
            # A family that keeps each image's encoding reads the image on the scheduler's thread, once
            # per image (`encode_images`): its pixels are not processed here at every turn.
            inputs = self._fit_history(None if self.adapter.keeps_images else image, question, history)
            prompt = inputs["input_ids"][0].tolist()
        request = Request(
            prompt=prompt,
            image=image,
            image_key=key,
            settings=settings,
            inputs=inputs,
            cancel=stop_event or threading.Event(),
            second_look=self.adapter.second_look is not None and self.adapter.second_look.applies(question),
            kind=question_kind(question),
        )
        lane = self._lane(key)
        return Reply(self, lane, lane.submit(request), lookup=_lookup(key, question, history))

    def stream(
        self,
        image: Any,
        question: str,
        history: list[Turn] | None = None,
        settings: GenerationSettings | None = None,
        stop_event: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the answer so far, growing, until generation ends or `stop_event` is set."""
        image, key, question = self._checked(image, question)
        self._prefetch(image, key)
        question, history = self._asked(image, key, question, history or [])
        if question is None:  # outside the model's world: declined before any generation
            yield UNANSWERABLE
            return
        if self.scheduler is None:
            settings = settings or GenerationSettings()
            yield from self._stream_from_adapter(image, question, history, settings, stop_event or threading.Event())
            return
        reply = self._enqueue(image, key, question, history, settings, stop_event)
        try:
            yield from reply
        finally:
            # The consumer stopped early (Stop button, closed tab): the scheduler drops the row.
            reply.stop()

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
        """Answer many single-turn questions at once (evaluation)."""
        settings = settings or GenerationSettings()
        checked = [self._checked(image, question) for image, question in zip(images, questions)]
        keys = [key for _, key, _ in checked]
        # The world gate first, as in `stream`: declined questions are `unanswerable`, the rest asked as worded by it.
        asked = [(image, self._asked(image, key, question, [])[0]) for image, key, question in checked]
        answers = [UNANSWERABLE] * len(asked)
        kept = [i for i, (_, question) in enumerate(asked) if question is not None]
        if not kept:
            return answers
        if self.adapter.batched:
            replies = [self._enqueue(asked[i][0], keys[i], asked[i][1], [], settings, None) for i in kept]
            found = [reply.text() for reply in replies]
        else:
            kwargs = settings.generate_kwargs()
            found = self._on_model(
                lambda: self.adapter.answer_batch([asked[i][0] for i in kept], [asked[i][1] for i in kept], kwargs)
            )
        for i, answer in zip(kept, found):
            answers[i] = answer
        return answers

    def _on_model(self, fn: Any) -> Any:
        """Run `fn` where the model is owned: between the first lane's steps, never beside them (only a
        second look, or another lane's steps, may run beside, for a family whose forwards keep nothing
        between calls)."""
        return fn() if self.scheduler is None else self.scheduler.call(fn, timeout_s=self.timeout_s)

    def _remember(self, reply: Reply) -> None:
        n = len(reply.answer_tokens)
        if not n or len(reply.request.attention) < n:  # an empty answer has no picture
            return
        self._attention.put((*reply.lookup, reply.text_so_far), torch.stack(reply.request.attention[:n]))

    def answer_attention(
        self, image: Any, question: str, answer: str, history: list[Turn] | None = None
    ) -> torch.Tensor | None:
        """(A, N): where each answer token's predicting position looked over the N image tokens, mean over
        fused layers and heads. From the answering pass itself when this engine gave that answer; else
        (another engine's answer) from one forward pass over the prompt and the answer."""
        if not self.adapter.records_attention or not answer:
            return None
        return self._answer_attention(*self._checked(image, question), answer, history or [])

    def _answer_attention(
        self, image: Image.Image, key: str, question: str, answer: str, history: list[Turn]
    ) -> torch.Tensor | None:
        """`answer_attention` for an image and question already checked (`key`: the image's `_image_key`)."""
        question, history = self._asked(image, key, question, history)  # as the answering pass was asked
        if question is None:
            return None
        weights = self._attention.get((*_lookup(key, question, history), answer))
        if weights is not None:
            return weights
        inputs = self._fit_history(image, question, history)
        answer_ids = self.adapter.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return self._on_model(lambda: self.adapter.answer_attention(inputs, answer_ids))

    def attention_overlay(self, image: Any, question: str, answer: str, history: list[Turn] | None = None) -> Image.Image | None:
        """The image with the model's cross-attention for `answer` drawn over it, where the family has it."""
        found = self._attention_grid(image, question, answer, history)
        return None if found is None else overlay_attention(*found)

    def attention_grid(self, image: Any, question: str, answer: str, history: list[Turn] | None = None) -> np.ndarray | None:
        """(h, w) in [0, 1]: where the model looked over the image's patches for `answer`, the map
        `attention_overlay` draws (the app has the browser draw it: `overlay.overlay_html`)."""
        found = self._attention_grid(image, question, answer, history)
        return None if found is None else found[1]

    def _attention_grid(
        self, image: Any, question: str, answer: str, history: list[Turn] | None
    ) -> tuple[Image.Image, np.ndarray] | None:
        """(the image as read, its grid) for `attention_overlay` and `attention_grid`."""
        if not self.adapter.shows_attention or not answer or answer == UNANSWERABLE:
            return None
        image, key, question = self._checked(image, question)
        if self.adapter.records_attention:
            weights = self._answer_attention(image, key, question, answer, history or [])
            grid = None if weights is None or not len(weights) else self.adapter.grid_from_weights(weights.mean(0), image)
        else:
            asked, history = self._asked(image, key, question, history or [])
            if asked is None:
                return None
            inputs = self._fit_history(image, asked, history)
            answer_ids = self.adapter.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            grid = self._on_model(lambda: self.adapter.attention_grid(inputs, answer_ids))
        return None if grid is None else (image, np.asarray(grid))

    def object_overlays(
        self, image: Any, question: str, answer: str, history: list[Turn] | None = None
    ) -> list[tuple[str, Image.Image]]:
        """For a description: (phrase, overlay) per object it names (`object_grids`, drawn over the image)."""
        found = self._token_grids(image, question, answer, history)
        return object_panels(found[0], answer, *found[1:]) if found else []

    def object_grids(
        self, image: Any, question: str, answer: str, history: list[Turn] | None = None
    ) -> list[tuple[str, np.ndarray]]:
        """For a description: (phrase, (h, w) grid in [0, 1]) per object it names, each from the
        attention of that phrase's tokens while answering; [] when the answer names no object or
        the family has no map (the app has the browser draw them: `panels.panels_html`)."""
        found = self._token_grids(image, question, answer, history)
        return object_grids(answer, *found[1:]) if found else []

    def _token_grids(
        self, image: Any, question: str, answer: str, history: list[Turn] | None
    ) -> tuple[Image.Image, list[tuple[int, int]], np.ndarray] | None:
        """(the image as read, the answer's token offsets, one grid per answer token), where the
        answer names an object and the family has maps: what `object_overlays` and `object_grids` read."""
        if not self.adapter.records_attention or not object_phrases(answer):
            return None
        image, key, question = self._checked(image, question)
        weights = self._answer_attention(image, key, question, answer, history or [])  # (A, N), one row per answer token
        if weights is None or not len(weights):
            return None
        offsets = self.adapter.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return image, offsets, self.adapter.weight_grids(weights, image)


def _lookup(image_key: str, question: str, history: list[Turn]) -> tuple:
    """What an answer's recorded attention is kept under, with the answer: the image and the words
    asked (the prompt follows from them)."""
    return (image_key, question, tuple((turn.question, turn.answer) for turn in history))


class Reply:
    """One queued answer: iterate it for the text so far; `text()` waits for the whole answer."""

    def __init__(self, engine: ChatEngine, lane: Scheduler, request: Request, lookup: tuple = ()):
        self.engine = engine
        self.lane = lane  # the scheduler answering it
        self.request = request
        self.lookup = lookup  # where the engine keeps this answer's recorded attention (`_lookup`)
        self.tokens: list[int] = []
        self.text_so_far = ""
        self.finish_reason: str | None = None
        self._eos = lane.eos

    @property
    def answer_tokens(self) -> list[int]:
        return [t for t in self.tokens if t not in self._eos]

    def stop(self) -> None:
        self.request.cancel.set()

    def _events(self) -> list[tuple[str, Any]]:
        """The request's next event and every token event already queued behind it: a step that
        keeps drafted tokens (`drafts.py`) gives several at once, and each text shown is an event
        the app sends (and the browser draws), so they are shown together."""
        try:
            events = [self.lane.receive(self.request, self.engine.timeout_s)]
        except queue.Empty:
            self.stop()
            raise TimeoutError(f"No answer within {self.engine.timeout_s:.0f} s; please try again.") from None
        while events[-1][0] == "token":
            try:
                events.append(self.request.out.get_nowait())
            except queue.Empty:
                break
        return events

    def __iter__(self) -> Iterator[str]:
        tokenizer = self.engine.adapter.tokenizer
        while self.finish_reason is None:
            for kind, value in self._events():
                if kind == "error":
                    self.finish_reason = "error"
                    raise value
                if kind == "end":
                    self.finish_reason = value
                    break
                if not self.request.cancel.is_set():  # Stop pressed: show nothing more, even tokens already made
                    self.tokens.append(value)
            if self.finish_reason is not None or self.request.cancel.is_set():
                continue
            text = tokenizer.decode(self.answer_tokens, skip_special_tokens=True).strip()
            # Step by step, but never half a character (byte-level tokens) and never taking text back.
            if text != self.text_so_far and not text.endswith("\ufffd") and text.startswith(self.text_so_far):
                self.text_so_far = text
                yield text
        text = tokenizer.decode(self.answer_tokens, skip_special_tokens=True).strip()
        if text != self.text_so_far:
            self.text_so_far = text
            yield text
        if self.finish_reason in ("eos", "length"):
            self.engine._remember(self)

    def text(self) -> str:
        for _ in self:
            pass
        return self.text_so_far

