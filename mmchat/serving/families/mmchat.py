"""Our own gated cross-attention model (`model_type` "mmchat")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...modeling.modeling_mmchat import MMChatForConditionalGeneration
from ...modeling.processing_mmchat import MMChatProcessor
from .base import FamilyAdapter, Turn, stretch


class MMChatAdapter(FamilyAdapter):
    family = "mmchat"
    model_types = ("mmchat",)
    shows_attention = True
    model_class = MMChatForConditionalGeneration
    processor_class = MMChatProcessor

    def max_context_tokens(self) -> int | None:
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def inputs(self, image: Image.Image, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        messages = []
        for turn in history:
            messages += [{"role": "user", "content": turn.question}, {"role": "assistant", "content": turn.answer}]
        messages.append({"role": "user", "content": question})
        return self.to_device(self.processor(images=image, text=self.processor.prompt(messages)))

    def answer_batch(self, images: list[Image.Image], questions: list[str], generate_kwargs: dict[str, Any]) -> list[str]:
        prompts = [self.processor.prompt([{"role": "user", "content": q}]) for q in questions]
        return self.generate_continuations(self.processor(images=images, text=prompts), generate_kwargs)

    def token_attention(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> np.ndarray | None:
        """(answer tokens, h, w): where the position that predicted each answer token looked."""
        if answer_ids.numel() == 0:
            return None
        ids = torch.cat([inputs["input_ids"], answer_ids[None].to(self.device)], dim=1)
        with torch.no_grad():
            out = self.model(input_ids=ids, pixel_values=inputs["pixel_values"], output_cross_attentions=True)
        # (layers, B, nh, T, N) -> (n_answer, N), averaged over layers and heads
        n_answer = answer_ids.numel()
        weights = torch.stack(out.cross_attentions)[:, 0, :, -n_answer - 1 : -1].float().mean(dim=(0, 1))
        side = math.isqrt(weights.shape[-1])  # a square grid of patches (or CNN cells)
        weights = weights[:, -side * side :]  # drop a ViT's CLS token, keep the patch grid
        return weights.reshape(n_answer, side, side).cpu().numpy()

    def attention_grid(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> np.ndarray | None:
        # Where the tokens that predicted the answer looked, all together.
        grids = self.token_attention(inputs, answer_ids)
        return None if grids is None else stretch(grids.mean(axis=0))
