"""BLIP visual question answering (`model_type` "blip"): `Salesforce/blip-vqa-base`, `-capfilt-large`.

BLIP answers in three steps: a ViT encodes the image, a BERT text encoder reads the question while
cross-attending to the image, and a BERT text decoder writes the answer while cross-attending to the
encoded question. It was trained on single questions, so earlier turns are not given to it. The
engine keeps each image's ViT tokens for the questions that follow about it, and records the
heat-map while answering (`generate`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BlipForQuestionAnswering, BlipProcessor

from .base import FamilyAdapter, Turn


class BlipAdapter(FamilyAdapter):
    family = "blip"
    model_types = ("blip",)
    multi_turn = False
    # Streams token by token: the streamer goes to the text decoder's `generate`, whose prompt is the
    # one start token, which `skip_prompt=True` drops.
    shows_attention = True
    records_attention = True
    keeps_images = True
    # blip-vqa-base's ViT tokens, (577, 768) in fp32: 1.8 MB an image, so about 140 images.
    image_cache_bytes = 256 << 20
    # No list: transformers' default skips apply (the answer head `text_decoder.cls.predictions.decoder`,
    # tied to the word embeddings); every other linear layer quantizes and generates in nf4 and int8.
    skip_modules: dict[str, list[str]] = {}
    model_class = BlipForQuestionAnswering
    processor_class = BlipProcessor

    def max_context_tokens(self) -> int | None:
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def inputs(self, image: Image.Image | None, question: str, history: list[Turn]) -> dict[str, torch.Tensor]:
        """The question's tokens and, given an image, its pixels (`image` None: the engine's scheduler
        answers from the image's kept ViT tokens, `encode_images`, so the pixels would go unused)."""
        # `history` is ignored: the engine passes none, as `multi_turn` is False.
        if image is None:
            return self.to_device(self.processor.tokenizer(question, return_tensors="pt"))
        return self.to_device(self.processor(images=image, text=question, return_tensors="pt"))

    def collate(self, inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Requests waiting together as one batch, questions right-padded (BERT's side) to the longest:
        `generate` masks the padding in the decoder too, so each row answers as it would alone. The
        questions alone: the images come from their kept ViT tokens (`keeps_images`)."""
        questions = self.tokenizer.pad(
            {"input_ids": [x["input_ids"][0] for x in inputs], "attention_mask": [x["attention_mask"][0] for x in inputs]},
            padding_side="right",
            return_tensors="pt",
        )
        return self.to_device(questions)

    def answer_batch(self, images: list[Image.Image], questions: list[str], generate_kwargs: dict[str, Any]) -> list[str]:
        """One `BlipForQuestionAnswering.generate` per question length, so no question is padded: its
        answer decoder attends to a padded question's padding too (see `_question_mask`)."""
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

    # ---- answered from each image's kept encoding, the heat-map recorded while answering ----

    def encode_images(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """Each image's ViT tokens, (1, 1 + N, D): a follow-up about the same image runs no ViT."""
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            embeds = self.model.vision_model(pixel_values=pixel_values)[0]
        return [e.clone() for e in embeds.split(1)]  # apart: one cached image must not hold the batch's

    def generate(
        self,
        inputs: dict[str, torch.Tensor],
        images: list[torch.Tensor] | None,
        looked: Callable[[torch.Tensor], None] | None,
        **generate_kwargs: Any,
    ) -> None:
        """`BlipForQuestionAnswering.generate`'s three steps, the ViT's replaced by the kept `images`.
        With `looked`, each step's (B, 1 + N) map is what the decoder position attended to in the
        question, times where each question token looked in the image (mean over layers and heads)."""
        model = self.model
        image_embeds = torch.cat(images).to(self.device)  # (B, 1 + N, D)
        encoder, decoder = self._cross_attention("text_encoder"), self._cross_attention("text_decoder")
        to_image: list[torch.Tensor] = []  # each encoder layer's (B, nh, T, 1 + N)
        to_question: list[torch.Tensor] = []  # each decoder layer's (B, nh, q, T), step after step

        def report(*_: Any) -> None:
            """After each decoder forward: its last position over the question, (B, T), through the
            question's looks at the image, (B, T, 1 + N), mean over layers and heads."""
            weights = torch.stack(to_question)[:, :, :, -1].float().mean(dim=(0, 2))
            to_question.clear()
            looked(torch.einsum("bt,btn->bn", weights, maps))

        hooks = [core.register_forward_pre_hook(_question_mask, with_kwargs=True) for core in decoder]
        if looked:
            hooks += [_keep_weights(core, to_image) for core in encoder]
            hooks += [_keep_weights(core, to_question) for core in decoder]
            hooks.append(model.text_decoder.register_forward_hook(report))
        try:
            with torch.inference_mode():
                question = model.text_encoder(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    encoder_hidden_states=image_embeds,
                    encoder_attention_mask=_ones(image_embeds),
                ).last_hidden_state  # (B, T, D)
                maps = torch.stack(to_image).float().mean(dim=(0, 2)) if looked else None  # (B, T, 1 + N)
                model.text_decoder.generate(
                    input_ids=torch.full((len(question), 1), model.decoder_start_token_id, device=self.device),
                    eos_token_id=model.config.text_config.sep_token_id,
                    pad_token_id=model.config.text_config.pad_token_id,
                    encoder_hidden_states=question,
                    encoder_attention_mask=inputs["attention_mask"],  # a padded question's padding
                    **generate_kwargs,
                )
        finally:
            for hook in hooks:
                hook.remove()

    def _cross_attention(self, part: str) -> list[torch.nn.Module]:
        """The cross-attention cores of BLIP's text encoder (question -> image) or decoder (answer -> question)."""
        bert = self.model.text_encoder if part == "text_encoder" else self.model.text_decoder.bert
        return [layer.crossattention.self for layer in bert.encoder.layer]

    def answer_attention(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> torch.Tensor:
        """(A, 1 + N) by a second pass over the question and the answer: the same composition as the
        answering pass records (answer -> question, then question -> image)."""
        model = self.model
        with torch.inference_mode():
            image_embeds = model.vision_model(pixel_values=inputs["pixel_values"])[0]  # (1, 1 + N, D)
            encoded = model.text_encoder(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=_ones(image_embeds),
                output_attentions=True,
            )
            start = torch.tensor([[model.decoder_start_token_id]], device=self.device)
            decoded = model.text_decoder(
                input_ids=torch.cat([start, answer_ids[None].to(self.device)], dim=1),
                encoder_hidden_states=encoded.last_hidden_state,
                output_attentions=True,
            )
        # The decoder positions that chose the answer tokens look at the question: (layers, 1, nh, A, T) -> (A, T)
        to_question = torch.stack(decoded.cross_attentions)[:, 0, :, :-1].float().mean(dim=(0, 1))
        # The question tokens look at the image: (layers, 1, nh, T, 1 + N) -> (T, 1 + N)
        to_image = torch.stack(encoded.cross_attentions)[:, 0].float().mean(dim=(0, 1))
        return to_question @ to_image

    def weight_grids(self, weights: torch.Tensor, image: Image.Image | None = None) -> np.ndarray:
        """(A, 1 + N) -> (A, side, side): the ViT's CLS token dropped, its square patch grid kept."""
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        return weights[:, 1:].reshape(len(weights), side, side).float().cpu().numpy()


def _ones(states: torch.Tensor) -> torch.Tensor:
    """An all-ones mask over (B, L, D) states: BLIP attends to every image token and question position."""
    return torch.ones(states.shape[:-1], dtype=torch.long, device=states.device)


def _question_mask(core: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """A decoder cross-attention core's mask over the question, where the core reads it.

    In transformers 5.23 `BlipTextAttention` hands the question's mask to its core as
    `attention_mask`, which a cross-attention core ignores (it reads `encoder_attention_mask`), so the
    answer decoder attends to a padded question's padding too; the original BLIP passes all ones. With
    the mask where it is read, a padded question gets the answer it gets alone, and questions of any
    length share a batch."""
    if kwargs.get("encoder_attention_mask") is None:
        kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
    return args, kwargs


def _keep_weights(core: torch.nn.Module, into: list[torch.Tensor]) -> torch.utils.hooks.RemovableHandle:
    """Append the attention probabilities `core` computes (BLIP's cores return them second) to `into`."""
    return core.register_forward_hook(lambda _core, _args, out: into.append(out[1]))
