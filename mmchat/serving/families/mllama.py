"""Llama 3.2 Vision (`model_type` "mllama"): `meta-llama/Llama-3.2-11B-Vision(-Instruct)`.

A Llama 3.1 language model with gated cross-attention layers every few blocks that attend to a
tiled ViT-H/14 image encoding (up to 4 tiles of 560 px). Multi-turn through its chat template,
with the image in the first user turn; the cross-attention mask lets every later token see it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import MllamaForConditionalGeneration, MllamaProcessor

from .base import FamilyAdapter, Turn, stretch

# Without a chat template (the base, non-instruct checkpoints) the model card's plain prompt.
_PLAIN_TURN = "Question: {question}\nAnswer:"


class MllamaAdapter(FamilyAdapter):
    family = "mllama"
    model_types = ("mllama",)
    multi_turn = True
    shows_attention = True
    skip_modules: dict[str, list[str]] = {
        # bitsandbytes' int8 matmul fails on the projector's 5-D input (batch, images, tiles, patches,
        # features): "view size is not compatible ..." on CUDA, a shape mismatch on the CPU. Passing a
        # list replaces transformers' default skips, so the LM head (its one default) is named too.
        "int8": ["multi_modal_projector", "lm_head"],
    }
    model_class = MllamaForConditionalGeneration
    processor_class = MllamaProcessor

    # Switching to eager attention (for the weights) is model-wide: one attention map at a time.
    _attention_lock = threading.Lock()

    def __init__(self, model: torch.nn.Module, processor: Any):
        super().__init__(model, processor)
        if self.tokenizer.pad_token is None:  # batched answers pad; the end-of-turn token will do
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def max_context_tokens(self) -> int | None:
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def prompt(self, question: str, history: list[Turn]) -> str:
        """The chat-templated conversation, image in the first user turn, ready for the answer."""
        if self.processor.chat_template is None:
            turns = [_PLAIN_TURN.format(question=t.question) + f" {t.answer}\n" for t in history]
            return self.processor.image_token + self.processor.bos_token + "".join(turns) + _PLAIN_TURN.format(
                question=question
            )
        questions = [t.question for t in history] + [question]
        messages: list[dict[str, Any]] = []
        for i, q in enumerate(questions):
            content = [{"type": "text", "text": q}]
            messages.append({"role": "user", "content": ([{"type": "image"}] if i == 0 else []) + content})
            if i < len(history):
                messages.append({"role": "assistant", "content": [{"type": "text", "text": history[i].answer}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def inputs(self, image: Image.Image, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        # The template (or the plain prompt) already holds <|begin_of_text|>: no second one.
        batch = self.processor(
            images=image, text=self.prompt(question, history), add_special_tokens=False, return_tensors="pt"
        )
        return self.to_device(batch)

    def collate(self, inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Single requests' inputs as one batch, padded as the processor pads one: the text and its
        cross-attention mask on the left (every prompt ends where its answer starts), the tiles with
        zeros up to the most tiles."""
        on_left = {"input_ids", "attention_mask", "cross_attention_mask"}
        batch = {}
        for key in inputs[0]:
            shape = [max(x[key].shape[d] for x in inputs) for d in range(inputs[0][key].dim())]
            value = self.pad_token_id() if key == "input_ids" else 0
            batch[key] = torch.cat([_placed(x[key], shape, value, left=key in on_left) for x in inputs])
        return batch

    def answer_batch(self, images: list[Image.Image], questions: list[str], generate_kwargs: dict[str, Any]) -> list[str]:
        prompts = [self.prompt(q, []) for q in questions]
        # Left padding: every prompt ends where its answer starts.
        batch = self.processor(
            images=[[image] for image in images],
            text=prompts,
            padding=True,
            padding_side="left",
            add_special_tokens=False,
            return_tensors="pt",
        )
        return self.generate_continuations(batch, generate_kwargs)

    def attention_grid(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> np.ndarray | None:
        """Mean cross-attention of the answer's predicting positions over the image patches, tiles in place."""
        if answer_ids.numel() == 0:
            return None
        ids = torch.cat([inputs["input_ids"], answer_ids[None].to(self.device)], dim=1)
        n_answer = answer_ids.numel()
        mask = inputs["cross_attention_mask"]  # (1, T, images, tiles): answer tokens see what the last one saw
        mask = torch.cat([mask, mask[:, -1:].expand(-1, n_answer, -1, -1)], dim=1)
        model_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "cross_attention_mask")}
        # sdpa returns no weights; eager computes the same attention and does.
        with self._attention_lock:
            previous = self.model.config.text_config._attn_implementation
            self.model.set_attn_implementation({"text_config": "eager"})
            try:
                with torch.no_grad():
                    out = self.model(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        cross_attention_mask=mask,
                        output_attentions=True,
                        use_cache=False,
                        **model_inputs,
                    )
            finally:
                self.model.set_attn_implementation({"text_config": previous})
        layers = self.model.config.text_config.cross_attention_layers
        # (cross layers, 1, nh, T, tiles * (1 + patches)) -> (tiles * (1 + patches),)
        weights = torch.stack([out.attentions[i] for i in layers])[:, 0, :, -n_answer - 1 : -1].float().mean(dim=(0, 1, 2))
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        max_tiles = inputs["pixel_values"].shape[2]  # (1, images, tiles, C, H, W), padded to the most tiles
        # (tiles, 1 + side * side): each tile's CLS token first, then its patches row by row
        weights = weights[: max_tiles * (1 + side * side)].reshape(max_tiles, 1 + side * side)[:, 1:]
        rows, cols = vision.supported_aspect_ratios[int(inputs["aspect_ratio_ids"][0, 0]) - 1]
        tiles = weights[: rows * cols].reshape(rows, cols, side, side)  # tiles cut row by row from the canvas
        grid = tiles.permute(0, 2, 1, 3).reshape(rows * side, cols * side).cpu().numpy()
        return stretch(grid)


def _placed(t: torch.Tensor, shape: list[int], value: float, left: bool) -> torch.Tensor:
    """`t` (1, ...) in a tensor of `shape` filled with `value`: at the end of dim 1 if `left`, else at the start."""
    out = t.new_full(shape, value)
    index = [slice(0, n) for n in t.shape]
    if left:
        index[1] = slice(shape[1] - t.shape[1], shape[1])
    out[tuple(index)] = t
    return out
