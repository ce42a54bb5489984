"""Our own gated cross-attention model (`model_type` "mmchat")."""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...modeling.fusion import CrossAttentionCache
from ...modeling.modeling_mmchat import MMChatForConditionalGeneration
from ...modeling.processing_mmchat import MMChatProcessor
from ..kv import KV
from ..packed_linear import pack_linear_weights
from ..row_buckets import pad_linear_rows
from ..traced import KINDS, LOOK, Encoder, Forwards
from .base import FamilyAdapter, Turn


class MMChatAdapter(FamilyAdapter):
    family = "mmchat"
    model_types = ("mmchat",)
    shows_attention = True
    batched = True
    records_attention = True
    tree_masks = True  # its LM is transformers' own, which takes a 4-D mask as given
    # Trained under bf16 autocast; in bf16 weights the shipped model gave the fp32 answer to all
    # 300 v1 questions and 120 descriptions of the selection sets, and its batches run faster on AMX.
    cpu_bf16 = True
    model_class = MMChatForConditionalGeneration
    processor_class = MMChatProcessor
    # On a CPU a bf16 linear costs about 70 µs however few its rows, an fp32 one 25 µs for one row;
    # bf16 (AMX) is cheaper from about 12 rows. So a bf16 model's forwards of at most this many
    # positions (rows x new tokens: the decode steps of a few users) run on an fp32 copy of its
    # weights (22 MB for the shipped model): a lone user's decode step took 7.5-8.3 ms against
    # 10.1-12.5 ms in bf16, and 8 rows' 11.4-12.2 ms against 10.4-14.0 ms (interleaved runs).
    small_forward_positions = 8
    # One row's prompt (a lone user's turn feeds 9-17 new tokens) runs on the copy up to this many
    # positions: 9-11 took 5.7-6.8 ms there against 6.7-7.7 in bf16. A wider bound for every forward
    # (12) made 16 users' batches slower, so it is one row's only (docs/serving-measurements.md: "One row's prompt").
    small_forward_prompt = 16
    # An image's state (projected patches and 4 layers' keys/values over 145 patches) is 1.3 MB in
    # fp32 on a CPU: room for about 98 conversations' images, more than the 64 answers the app runs
    # at once. The base's 64 MB held 49: with 64 users, 40-47 of their follow-ups encoded their image
    # again (104-111 images encoded for 64), and they got 81.6 against 97.4 answers/s (6 alternating
    # runs each).
    image_cache_bytes = 128 << 20
    # A CPU bf16 model's linear weights packed once in oneDNN's layout (`packed_linear.py`): its
    # forwards 6-16 % faster on an Intel Xeon with AMX, bit for bit the same outputs.
    pack_weights = True

    def __init__(self, model: MMChatForConditionalGeneration, processor: MMChatProcessor):
        super().__init__(model, processor)
        bf16_on_cpu = model.device.type == "cpu" and model.dtype == torch.bfloat16
        unquantized = getattr(model, "hf_quantizer", None) is None
        self.small_model = None
        # Its forwards keep nothing between calls (the maps are recorded into a list of each call's
        # own), but bitsandbytes' layers write to themselves in theirs (the 8-bit ones move their
        # weights into a state of their own on first use, and set the bias's dtype): side by side
        # only unquantized.
        self.steps_side_by_side = unquantized
        if bf16_on_cpu and unquantized:
            self.small_model = copy.deepcopy(model).float()
            # oneDNN builds a bf16 kernel per row count: a few, all built now. The layers that read the
            # patches (the ViT, the projector, each block's keys/values) see images x patches rows.
            blocks = model.cross_attention_blocks()
            image_side = [model.vision_model, model.multi_modal_projector, *(b.k_proj for b in blocks), *(b.v_proj for b in blocks)]
            if self.pack_weights:  # first, so that the kernels `pad_linear_rows` builds now are the packed ones
                pack_linear_weights(model)
            pad_linear_rows(model, skip=image_side)
        # The model calls, eager until `trace` gives them graphs (traced.py).
        self._encoder = Encoder(model)
        self._forwards = {id(m): Forwards(m) for m in (model, self.small_model) if m is not None}

    def trace(self, unrecorded: bool = True) -> tuple[int, int]:
        """Run the image encodes and forwards through traced graphs (`traced.py`), each as soon as it
        is traced (about a second each on a 2-core CPU; 9 graphs for the shipped model in bf16, 13
        with `unrecorded`). Only on a CPU, where it was measured, and unquantized: a bitsandbytes
        layer writes to itself in its forward. Each graph gives the eager call's outputs bit for bit
        (checked), so answers do not change. `unrecorded` False: of the forwards that record no
        heat-map, only a second look's (an engine that records runs no other; each graph holds
        about 30 MB)."""
        if self.device.type != "cpu" or getattr(self.model, "hf_quantizer", None) is not None:
            return 0, 0
        kinds = [kind for kind in KINDS if unrecorded or kind[0] or kind == LOOK]
        blank = Image.new("RGB", (64, 64), "white")
        kept = int(self._encoder.trace(self.processor(images=[blank])["pixel_values"].to(self.device)))
        example = self.encode_images([blank])[0]
        for forwards in self._forwards.values():
            kept += forwards.trace(example, kinds)
        return kept, 1 + len(kinds) * len(self._forwards)

    def default_lanes(self) -> int:
        """Two on a CPU of two cores or more, where forwards run beside each other (unquantized):
        measured on 2 cores, where three lanes answered 32 users 10 % slower than one
        (docs/serving-measurements.md, "two lanes"); on a GPU, one big batch."""
        if self.device.type != "cpu" or not self.steps_side_by_side:
            return 1
        return min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def max_context_tokens(self) -> int | None:
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def _prompt(self, question: str, history: list[Turn]) -> str:
        messages = []
        for turn in history:
            messages += [{"role": "user", "content": turn.question}, {"role": "assistant", "content": turn.answer}]
        messages.append({"role": "user", "content": question})
        return self.processor.prompt(messages)

    def inputs(self, image: Image.Image, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        return self.to_device(self.processor(images=image, text=self._prompt(question, history)))

    # ---- step by step, for the scheduler's shared batches ----

    def prompt_ids(self, question: str, history: list[Turn]) -> list[int]:
        """The token ids `inputs` would give, without touching the image."""
        return self.tokenizer(self._prompt(question, history))["input_ids"]

    def encode_images(self, images: list[Image.Image]) -> list[CrossAttentionCache]:
        """One state per image: its projected patches and every fused layer's keys/values, (1, ...).

        On a CPU the keys/values are kept in fp32 whatever the weights' precision (the fused block
        attends in their precision): there a bf16 model's cross-attention with its weights, which the
        heat-map records, took 63 µs a layer for one row against 19 µs in fp32 (oneDNN's bf16
        batched matmuls cost about 50 µs however small), and the two were even at 16 rows. It costs
        0.6 MB more per image. A GPU keeps the weights' precision."""
        return self.encode_pixels(self.processor(images=images)["pixel_values"].to(self.device))

    def encode_pixels(self, pixel_values: torch.Tensor) -> list[CrossAttentionCache]:
        """`encode_images` from the image processor's output: (B, 3, H, W) -> one state per image."""
        dtype = torch.float32 if self.device.type == "cpu" else None

        def own(t: torch.Tensor) -> torch.Tensor:
            """One image's slice in a copy of its own: fp32 on a CPU, and contiguous (the projection
            hands out transposed views, and every join copies a state into the running batch's slots:
            strided, twice as long). Copied image by image: converting the whole batch first, then
            cutting it into images, copied everything twice, 19.3 ms for 15 images against 6.1."""
            return t.to(dtype or t.dtype, memory_format=torch.contiguous_format, copy=True)

        cache = self._encoder(pixel_values)
        with torch.inference_mode():
            return [
                CrossAttentionCache(
                    cache.image_states[i : i + 1].clone(),
                    {layer: (own(k[i : i + 1]), own(v[i : i + 1])) for layer, (k, v) in cache.key_values.items()},
                )
                for i in range(len(pixel_values))
            ]

    def step(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, L + T): the cached columns, then these; or (B, 1, T, L + T) bool
        position_ids: torch.Tensor,  # (B, T)
        past: KV | None,
        images: CrossAttentionCache,
        record: bool,
        keep: int = 1,
    ) -> tuple[torch.Tensor, KV, torch.Tensor | None]:
        """One forward of a batch: the last `keep` positions' logits (B, keep, V), the grown
        keys/values, and where those positions looked (B, keep, N), mean over fused layers and
        heads, when `record`."""
        model = self.model
        B, T = input_ids.shape
        if self.small_model is not None and (B * T <= self.small_forward_positions or (B == 1 and T <= self.small_forward_prompt)):
            model = self.small_model
        return self._forwards[id(model)](input_ids, attention_mask, position_ids, past, images, record, keep)

    def weight_grids(self, weights: torch.Tensor, image: Image.Image | None = None) -> np.ndarray:
        """(A, N) -> (A, side, side): a square grid of patches (or CNN cells), a ViT's CLS token dropped."""
        side = math.isqrt(weights.shape[-1])
        return weights[:, -side * side :].reshape(len(weights), side, side).float().cpu().numpy()

    def answer_batch(self, images: list[Image.Image], questions: list[str], generate_kwargs: dict[str, Any]) -> list[str]:
        prompts = [self.processor.prompt([{"role": "user", "content": q}]) for q in questions]
        return self.generate_continuations(self.processor(images=images, text=prompts), generate_kwargs)

    def answer_attention(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> torch.Tensor:
        """(A, N) by a second forward pass over prompt + answer: where each answer token's predicting
        position looked, mean over fused layers and heads (the engine records the same while answering)."""
        ids = torch.cat([inputs["input_ids"], answer_ids[None].to(self.device)], dim=1)
        with torch.inference_mode():
            out = self.model(input_ids=ids, pixel_values=inputs["pixel_values"], output_cross_attentions=True)
        n_answer = answer_ids.numel()
        # (layers, B, nh, T, N) -> (A, N)
        return torch.stack(out.cross_attentions)[:, 0, :, -n_answer - 1 : -1].float().mean(dim=(0, 1))
