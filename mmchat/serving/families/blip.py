"""BLIP visual question answering (`model_type` "blip"): `Salesforce/blip-vqa-base`, `-capfilt-large`.

BLIP answers in three steps: a ViT encodes the image, a BERT text encoder reads the question while
cross-attending to the image, and a BERT text decoder writes the answer while cross-attending to the
encoded question. It was trained on single questions, so earlier turns are not given to it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BlipForQuestionAnswering, BlipProcessor

from .base import FamilyAdapter, Turn, stretch


class BlipAdapter(FamilyAdapter):
    family = "blip"
    model_types = ("blip",)
    multi_turn = False
    # Streams token by token: `BlipForQuestionAnswering.generate` hands the streamer to its text
    # decoder's `generate`, whose prompt is the one start token, which `skip_prompt=True` drops.
    shows_attention = True
    # No list: transformers' default skips apply (the answer head `text_decoder.cls.predictions.decoder`,
    # tied to the word embeddings); every other linear layer quantizes and generates in nf4 and int8.
    skip_modules: dict[str, list[str]] = {}
    model_class = BlipForQuestionAnswering
    processor_class = BlipProcessor

    def max_context_tokens(self) -> int | None:
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def inputs(self, image: Image.Image, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        # `history` is ignored: the engine passes none, as `multi_turn` is False.
        batch = self.processor(images=image, text=question, return_tensors="pt")
        return self.to_device(batch)

    def batch_key(self, inputs: dict[str, torch.Tensor]) -> int:
        """The question's length: only questions of one length share a `generate`, unpadded (see
        `answer_batch`); the images all have the processor's one size."""
        return inputs["input_ids"].shape[1]

    def collate(self, inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Requests of one `batch_key` as one batch: nothing to pad."""
        return {key: torch.cat([x[key] for x in inputs]) for key in inputs[0]}

    def answer_batch(self, images: list[Image.Image], questions: list[str], generate_kwargs: dict[str, Any]) -> list[str]:
        """One generate per question length, so no question is padded.

        BLIP's text decoder attends to every position of the encoded question: transformers (5.23)
        drops the encoder attention mask in `BlipTextAttention`, and the original BLIP passes all ones.
        A padded question in a batch could then get another answer than the same question asked alone
        in the chat; questions of equal length need no padding.
        """
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, question in enumerate(questions):
            by_length[len(self.tokenizer(question)["input_ids"])].append(i)
        answers = [""] * len(questions)
        for indices in by_length.values():
            batch = self.processor(
                images=[images[i] for i in indices], text=[questions[i] for i in indices], return_tensors="pt"
            )
            with torch.inference_mode():
                out = self.model.generate(**self.to_device(batch), **generate_kwargs)
            for i, answer in zip(indices, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
                answers[i] = answer.strip()
        return answers

    def attention_grid(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> np.ndarray | None:
        """Answer → question attention (decoder) composed with question → image attention (encoder)."""
        if answer_ids.numel() == 0:
            return None
        model = self.model
        with torch.no_grad():
            image_embeds = model.vision_model(pixel_values=inputs["pixel_values"])[0]  # (1, 1 + N, D)
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
            encoded = model.text_encoder(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
                output_attentions=True,
            )
            start = torch.tensor([[model.decoder_start_token_id]], device=self.device)
            decoded = model.text_decoder(
                input_ids=torch.cat([start, answer_ids[None].to(self.device)], dim=1),
                encoder_hidden_states=encoded.last_hidden_state,
                output_attentions=True,
            )
        # Decoder positions that predicted the answer tokens look at the question: (layers, 1, nh, A, T) -> (T,)
        to_question = torch.stack(decoded.cross_attentions)[:, 0, :, :-1].float().mean(dim=(0, 1, 2))
        # Question tokens look at the image: (layers, 1, nh, T, 1 + N) -> (T, 1 + N)
        to_image = torch.stack(encoded.cross_attentions)[:, 0].float().mean(dim=(0, 1))
        weights = (to_question @ to_image)[1:]  # drop the CLS token, keep the patch grid, (N,)
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        grid = weights.reshape(side, side).cpu().numpy()
        return stretch(grid)
