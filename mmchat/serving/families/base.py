"""The one interface the engine uses, whatever model family answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image


@dataclass
class Turn:
    """One earlier question about the current image and the answer given."""

    question: str
    answer: str


class ServingError(RuntimeError):
    """The model could not answer (its server is down, slow, or refused); the message is for the user as it is."""


class FamilyAdapter:
    """Wraps a loaded model and its processor; subclasses are registered by `model_type`.

    `model_types` are the config `model_type`s a family serves, `multi_turn` says whether
    earlier turns are given to the model, and `skip_modules` maps a quantization mode to the modules kept unquantized (because
    bitsandbytes breaks on them). A list replaces transformers' default skips (usually `lm_head`),
    so name those too; no entry for a mode keeps the defaults.

    `streams_itself`: the adapter answers through `stream_answer` (a family with no local model,
    such as a remote server) instead of the engine running `model.generate` with a streamer.
    `remote`: the answers come from another machine (the UI says so).
    `default_concurrency`: answers the app streams at once unless told otherwise: one for a model
    in this process, many for a server that batches them.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    multi_turn: ClassVar[bool] = True
    shows_attention: ClassVar[bool] = False
    skip_modules: ClassVar[dict[str, list[str]]] = {}
    streams_itself: ClassVar[bool] = False
    remote: ClassVar[bool] = False
    default_concurrency: ClassVar[int] = 1
    model_class: ClassVar[Any]
    processor_class: ClassVar[Any]
    world_gate: Any = None  # the checkpoint's `mmchat.serving.gate.WorldGate`, set by the loader if it has one

    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model = model
        self.processor = processor

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    def max_context_tokens(self) -> int | None:
        return None

    def inputs(self, image: Image.Image, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        """Model inputs for answering `question` about `image` after `history`."""
        raise NotImplementedError

    def generate_kwargs(self) -> dict[str, Any]:
        return {}

    def answer_batch(self, images: list[Image.Image], questions: list[str], generate_kwargs: dict[str, Any]) -> list[str]:
        """Single-turn answers to many questions in one batched generate (evaluation)."""
        raise NotImplementedError

    def stream_answer(
        self,
        image: Image.Image,
        question: str,
        history: list[Turn],
        generate_kwargs: dict[str, Any],
        stop_event: threading.Event,
    ) -> Iterator[str]:
        """Pieces of the answer as they come, for adapters with `streams_itself` (the engine joins them).

        The one-request-at-a-time path of a family that generates elsewhere: stop yielding once
        `stop_event` is set; raise `ServingError` with a message for the user when it cannot answer.
        Closing the generator must end the request.
        """
        raise NotImplementedError

    def to_device(self, batch: Any) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def generate_continuations(self, batch: Any, generate_kwargs: dict[str, Any]) -> list[str]:
        """Generate for a left-padded batch of prompts and decode only what follows each prompt."""
        batch = self.to_device(batch)
        with torch.inference_mode():
            out = self.model.generate(**batch, **generate_kwargs)
        answers = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [a.strip() for a in answers]

    def attention_grid(
        self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor
    ) -> np.ndarray | None:
        """(h, w) weights over the image patches that the answer attended to, or None."""
        return None


def stretch(grid: np.ndarray) -> np.ndarray:
    """Attention weights to [0, 1]: what matters is where attention is higher than elsewhere."""
    return (grid - grid.min()) / max(float(grid.max() - grid.min()), 1e-12)
