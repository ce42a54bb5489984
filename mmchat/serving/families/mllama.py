"""Llama 3.2 Vision (`model_type` "mllama"): `meta-llama/Llama-3.2-11B-Vision(-Instruct)`.

A Llama 3.1 language model with gated cross-attention layers every few blocks that attend to a
tiled ViT-H/14 image encoding (up to 4 tiles of 560 px). Multi-turn through its chat template,
with the image in the first user turn; the cross-attention mask lets every later token see it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache, MllamaForConditionalGeneration, MllamaProcessor
from transformers.models.mllama.image_processing_pil_mllama import get_optimal_tiled_canvas
from transformers.models.mllama.modeling_mllama import _prepare_cross_attention_mask, eager_attention_forward

from ..kv import KV, from_cache, to_cache
from .base import FamilyAdapter, Turn, stretch

# Without a chat template (the base, non-instruct checkpoints) the model card's plain prompt.
_PLAIN_TURN = "Question: {question}\nAnswer:"


@dataclass
class MllamaImages:
    """A batch's images as its cross-attention layers read them, computed once per image."""

    tiles: torch.Tensor  # (B, max tiles): 1 where a tile is part of the image, 0 where it pads
    key_values: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (B, kv heads, max tiles * tile tokens, hd)


class MllamaAdapter(FamilyAdapter):
    family = "mllama"
    model_types = ("mllama",)
    multi_turn = True
    shows_attention = True
    # Step by step in the scheduler's shared batches: requests join and leave between steps, and a
    # follow-up starts from its conversation's cached image keys/values and earlier turns; the
    # heat-map is recorded while answering (`_looked`).
    batched = True
    records_attention = True
    # An image's cross-attention keys/values at the real size (8 layers, 4 tiles of 1,601 tokens,
    # 8 kv heads of 128, bf16) are about 210 MB: room for some 20 conversations' images.
    image_cache_bytes = 4 << 30
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

    # ---- step by step, for the scheduler's shared batches ----

    def prompt_ids(self, question: str, history: list[Turn]) -> list[int]:
        """The token ids `inputs` would give, without touching the image."""
        return self.tokenizer(self.prompt(question, history), add_special_tokens=False)["input_ids"]

    def _cross_layers(self) -> list[int]:
        return list(self.model.config.text_config.cross_attention_layers)

    def encode_images(self, images: list[Image.Image]) -> list[MllamaImages]:
        """One state per image: which tiles it has and every cross-attention layer's keys/values,
        padded to the most tiles. The model's own layers project them: a one-token forward with the
        vision states leaves each cross-attention layer's keys/values in the cache."""
        pixels = self.processor.image_processor(images=[[image] for image in images], return_tensors="pt")
        pixels = self.to_device({k: v for k, v in pixels.items() if isinstance(v, torch.Tensor)})
        tiles = pixels["aspect_ratio_mask"][:, 0]  # (B, tiles in this batch)
        n = len(images)
        ids = torch.full((n, 1), self.model.config.image_token_index, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                pixel_values=pixels["pixel_values"],
                aspect_ratio_ids=pixels["aspect_ratio_ids"],
                aspect_ratio_mask=pixels["aspect_ratio_mask"],
                cross_attention_mask=tiles[:, None, None, :],  # (B, 1 token, 1 image, tiles)
                past_key_values=DynamicCache(),
                use_cache=True,
                logits_to_keep=1,
            )
        most = self.model.config.vision_config.max_num_tiles
        tile_tokens = self.model.model.vision_model.num_patches

        def padded(t: torch.Tensor) -> torch.Tensor:  # (B, kv heads, tiles * tile tokens, hd) -> most tiles
            extra = most * tile_tokens - t.shape[2]
            return torch.nn.functional.pad(t, (0, 0, 0, extra)) if extra else t

        layers = out.past_key_values.layers
        state = MllamaImages(
            torch.nn.functional.pad(tiles, (0, most - tiles.shape[1])),
            {i: (padded(layers[i].keys), padded(layers[i].values)) for i in self._cross_layers()},
        )
        return self.split_images(state)

    def step(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, L + T): the cached columns, then these
        position_ids: torch.Tensor,  # (B, T)
        past: KV | None,  # the self-attention layers' keys/values, in layer order
        images: MllamaImages,
        record: bool,
        keep: int = 1,
    ) -> tuple[torch.Tensor, KV, torch.Tensor | None]:
        """One forward of a batch: the last `keep` positions' logits (B, keep, V), the grown
        self-attention keys/values, and where those positions looked (B, keep, N), when `record`."""
        B, T = input_ids.shape
        # A token sees its row's image from the <|image|> token on, as the processor's cross-attention
        # mask says; where the image token is not among these columns, it came before them.
        at_image = input_ids == self.model.config.image_token_index
        start = torch.where(at_image.any(dim=1), at_image.int().argmax(dim=1), 0)[:, None]  # (B, 1)
        sees = torch.arange(T, device=input_ids.device)[None] >= start  # (B, T)
        cross_mask = (sees[:, :, None, None] & images.tiles[:, None, None, :].bool()).long()  # (B, T, 1 image, tiles)
        with self._cross_attention_inputs(keep if record else 0) as seen, torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cross_attention_mask=cross_mask,
                past_key_values=self._cache(past, images, B),
                use_cache=True,
                logits_to_keep=keep,
            )
            weights = self._looked(seen, images, cross_mask[:, -keep:]) if record else None
        cross = set(self._cross_layers())
        grown = [kv for i, kv in enumerate(from_cache(out.past_key_values)) if i not in cross]
        return out.logits[:, -keep:].float(), grown, weights

    def _cache(self, past: KV | None, images: MllamaImages, rows: int) -> DynamicCache:
        """Every layer's keys/values in layer order: the rows' text so far at the self-attention
        layers (none yet: empty), the images' at the cross-attention layers."""
        text = self.model.config.text_config
        cross = set(self._cross_layers())
        own = iter(past or [])
        like = next(iter(images.key_values.values()))[0]  # the keys/values' precision (a quantized model computes in another)
        empty = like.new_empty((rows, text.num_key_value_heads, 0, text.hidden_size // text.num_attention_heads))
        return to_cache([images.key_values[i] if i in cross else next(own, (empty, empty)) for i in range(text.num_hidden_layers)])

    @contextmanager
    def _cross_attention_inputs(self, keep: int) -> Iterator[dict[int, torch.Tensor]]:
        """While inside: each cross-attention layer's input at the last `keep` positions, by layer
        (nothing kept for `keep` 0)."""
        seen: dict[int, torch.Tensor] = {}

        def kept(i: int) -> Callable:
            return lambda module, args, kwargs: seen.__setitem__(i, (args[0] if args else kwargs["hidden_states"])[:, -keep:])

        layers = self.model.model.language_model.layers
        hooks = [layers[i].cross_attn.register_forward_pre_hook(kept(i), with_kwargs=True) for i in self._cross_layers()] if keep else []
        try:
            yield seen
        finally:
            for hook in hooks:
                hook.remove()

    def _looked(self, seen: dict[int, torch.Tensor], images: MllamaImages, cross_mask: torch.Tensor) -> torch.Tensor:
        """(B, keep, N): where the kept positions looked over the image tokens, mean over the
        cross-attention layers and heads. sdpa gives no weights, so each layer's are computed again
        from its input by its own query projection, with transformers' own mask preparation and eager
        attention for Mllama (the attention implementation is model-wide: switching it for a step
        would be slower)."""
        mask, _ = _prepare_cross_attention_mask(
            cross_mask, num_vision_tokens=self.model.model.vision_model.num_patches, dtype=images.key_values[next(iter(seen))][0].dtype
        )  # (B, 1, keep, N), additive
        maps = []
        for i, hidden in seen.items():
            module = self.model.model.language_model.layers[i].cross_attn
            B, K, _ = hidden.shape
            query = module.q_norm(module.q_proj(hidden).view(B, K, module.num_heads, module.head_dim).transpose(1, 2))
            key, value = images.key_values[i]
            _, weights = eager_attention_forward(module, query.to(key.dtype), key, value, mask, scaling=module.scaling)
            maps.append(weights.float().mean(dim=1))  # (B, keep, N)
        return torch.stack(maps).mean(dim=0)

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

    def answer_attention(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> torch.Tensor:
        """(A, N) by a second forward pass over prompt + answer: where each answer token's predicting
        position looked over the image tokens (every tile's CLS and patches), mean over the
        cross-attention layers and heads (the engine records the same while answering)."""
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
        # (cross layers, 1, nh, T, tiles * (1 + patches)) -> (A, tiles * (1 + patches))
        weights = torch.stack([out.attentions[i] for i in self._cross_layers()])[:, 0, :, -n_answer - 1 : -1]
        return weights.float().mean(dim=(0, 1))

    def attention_grid(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> np.ndarray | None:
        """Mean cross-attention of the answer's predicting positions over the image patches, tiles in place."""
        if answer_ids.numel() == 0:
            return None
        rows, cols = self.model.config.vision_config.supported_aspect_ratios[int(inputs["aspect_ratio_ids"][0, 0]) - 1]
        return stretch(self._in_place(self.answer_attention(inputs, answer_ids).mean(0)[None], rows, cols)[0])

    def weight_grids(self, weights: torch.Tensor, image: Image.Image | None = None) -> np.ndarray:
        """(A, N) -> (A, rows * side, cols * side): the tiles where the processor cut them from `image`."""
        processor = self.processor.image_processor
        tile = processor.size["height"]
        height, width = get_optimal_tiled_canvas(
            image_height=image.height, image_width=image.width, max_image_tiles=processor.max_image_tiles, tile_size=tile
        )
        return self._in_place(weights, height // tile, width // tile)

    def _in_place(self, weights: torch.Tensor, rows: int, cols: int) -> np.ndarray:
        """(A, max tiles * (1 + side * side)) -> (A, rows * side, cols * side), each tile's CLS dropped."""
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        A = len(weights)
        # (A, tiles, 1 + side * side): each tile's CLS token first, then its patches row by row
        weights = weights[:, : vision.max_num_tiles * (1 + side * side)].reshape(A, vision.max_num_tiles, -1)[:, :, 1:]
        tiles = weights[:, : rows * cols].reshape(A, rows, cols, side, side)  # tiles cut row by row from the canvas
        return tiles.permute(0, 1, 3, 2, 4).reshape(A, rows * side, cols * side).float().cpu().numpy()
