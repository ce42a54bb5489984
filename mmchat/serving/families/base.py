"""The one interface the engine uses, whatever model family answers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..kv import image_state, image_tensors


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
    `default_concurrency`: answers the app streams at once unless told otherwise: 64 for a model in
    this process (the engine's scheduler batches them, or answers them in turn for a family it
    cannot batch), 16 for a server that batches them.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    multi_turn: ClassVar[bool] = True
    shows_attention: ClassVar[bool] = False
    # True: the family runs step by step in the scheduler's shared batches (`prompt_ids`,
    # `encode_images`, `stack_images`, `select_images`, `step`); False: one `generate` at a time.
    batched: ClassVar[bool] = False
    # True: the heat-map comes from the answering pass (a batched family's `step` returns where each
    # chosen token looked; another family's `generate` reports it); False: a second pass (`attention_grid`).
    records_attention: ClassVar[bool] = False
    # True: a batched family's `step` also takes a (B, 1, T, L) bool attention mask (which columns
    # each new position sees), so a prefill can verify a tree of drafted answers (`answer_tree.py`).
    tree_masks: ClassVar[bool] = False
    # True: a family answered by its own `generate` (not `batched`) that encodes each image once
    # (`encode_images`) and answers every turn about it from that state (`generate`'s `images`).
    keeps_images: ClassVar[bool] = False
    # Bytes of image states (`encode_images`) the engine keeps for follow-ups.
    image_cache_bytes: ClassVar[int] = 64 << 20
    skip_modules: ClassVar[dict[str, list[str]]] = {}
    # True: on a CPU with AMX, "auto" loads it in bf16 (`loading.resolve_dtype`); only where that
    # was measured to give the fp32 answers. False: fp32 on every CPU.
    cpu_bf16: ClassVar[bool] = False
    # True: `encode_images` and `step` keep nothing between calls (no hooks, no model-wide switch), so
    # the scheduler may run a second look's (`second_look.py`) on a thread of its own beside its steps.
    steps_side_by_side: ClassVar[bool] = False
    streams_itself: ClassVar[bool] = False
    remote: ClassVar[bool] = False
    default_concurrency: ClassVar[int] = 64
    model_class: ClassVar[Any]
    processor_class: ClassVar[Any]
    world_gate: Any = None  # the checkpoint's `mmchat.serving.gate.WorldGate`, set by the loader if it has one
    # The checkpoint's `mmchat.serving.second_look.SecondLook`, set by the loader if it has one.
    second_look: Any = None

    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model = model
        self.processor = processor

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    def default_lanes(self) -> int:
        """Schedulers side by side an engine runs by default (`ChatEngine`'s `lanes`): one, but
        where a family measured more."""
        return 1

    def max_context_tokens(self) -> int | None:
        return None

    def input_size(self) -> tuple[int, int]:
        """(width, height) of the pixels the model reads, as its image processor resizes to."""
        size = self.processor.image_processor.size
        return int(size["width"]), int(size["height"])

    def inputs(self, image: Image.Image | None, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        """Model inputs for answering `question` about `image` after `history`; a family that
        `keeps_images` is also asked with `image` None, for the text's inputs alone."""
        raise NotImplementedError

    def generate_kwargs(self) -> dict[str, Any]:
        return {}

    def eos_token_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def pad_token_id(self) -> int:
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_token_ids()[0])

    # ---- a batched family's image states: a dataclass of one batch-first tensor, then `key_values`
    # (layer -> (k, v), batch first); mmchat's `CrossAttentionCache`, Llama 3.2 Vision's `MllamaImages`

    def stack_images(self, states: list[Any]) -> Any:
        tensors = [torch.cat(parts) for parts in zip(*map(image_tensors, states))]
        return image_state(type(states[0]), sorted(states[0].key_values), tensors)

    def image_tensors(self, state: Any) -> list[torch.Tensor]:
        """The state's tensors, batch first, in a fixed order (the scheduler's slots hold them)."""
        return image_tensors(state)

    def images_from_tensors(self, like: Any, tensors: list[torch.Tensor]) -> Any:
        return image_state(type(like), sorted(like.key_values), tensors)

    def select_images(self, state: Any, idx: torch.Tensor) -> Any:
        tensors = image_tensors(state)
        idx = idx.to(tensors[0].device)
        return image_state(type(state), sorted(state.key_values), [t[idx] for t in tensors])

    def split_images(self, state: Any) -> list[Any]:
        """A batch's state as one state per image, each owning its memory (the image cache keeps them
        apart). Slices copied: 16 images took 3 ms, against 8 ms by `select_images` one index at a time."""
        tensors = self.image_tensors(state)
        return [self.images_from_tensors(state, [t[i : i + 1].clone() for t in tensors]) for i in range(len(tensors[0]))]

    def weight_grids(self, weights: torch.Tensor, image: Image.Image | None = None) -> np.ndarray:
        """(A, N) recorded weights over the image tokens -> (A, h, w) grids laid out as the image is
        (for a family with `records_attention`); `image` is the picture the weights are about."""
        raise NotImplementedError

    def grid_from_weights(self, weights: torch.Tensor, image: Image.Image | None = None) -> np.ndarray:
        """(N,) weights over the image tokens -> the stretched (h, w) grid."""
        return stretch(self.weight_grids(weights[None], image)[0])

    def trace(self, unrecorded: bool = True) -> tuple[int, int]:
        """Run the family's forwards through traced graphs from now on, where it can (`traced.py`);
        a family that cannot keeps its eager forwards. `unrecorded` False: those that record no
        heat-map may stay eager (an engine that records runs few). Returns (graphs kept, graphs tried)."""
        return 0, 0

    def encode_images(self, images: list[Image.Image]) -> list[Any]:
        """One state per image, each with a batch dimension of 1: what answering reads of the image,
        computed once and kept for the conversation's follow-ups (`batched` or `keeps_images`)."""
        raise NotImplementedError

    def generate(
        self,
        inputs: dict[str, torch.Tensor],
        images: list[Any] | None,
        looked: Callable[[torch.Tensor], None] | None,
        **generate_kwargs: Any,
    ) -> None:
        """A family that is not `batched` answers `inputs` (one request, or a `collate`d batch) with
        its `generate`, streaming through `generate_kwargs`' streamer. `images`: each row's
        `encode_images` state, for a family that `keeps_images`. `looked`: for a family that
        `records_attention`, called after each step's forward, before its tokens are streamed, with
        (B, N) weights of where the position that chose each row's token looked."""
        with torch.inference_mode():
            self.model.generate(**inputs, **generate_kwargs)

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

    def answer_attention(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> torch.Tensor:
        """(A, N) by a second pass over prompt + answer, for a family that `records_attention`: what
        the answering pass records, for an answer this engine did not give."""
        raise NotImplementedError

    def attention_grid(
        self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor
    ) -> np.ndarray | None:
        """(h, w) weights over the image patches that the answer attended to, or None: for a family
        that `records_attention`, the mean of `answer_attention`'s rows on its `weight_grids` layout."""
        if not self.records_attention or answer_ids.numel() == 0:
            return None
        return self.grid_from_weights(self.answer_attention(inputs, answer_ids).mean(0))


def stretch(grid: np.ndarray) -> np.ndarray:
    """Attention weights to [0, 1]: what matters is where attention is higher than elsewhere."""
    return (grid - grid.min()) / max(float(grid.max() - grid.min()), 1e-12)
