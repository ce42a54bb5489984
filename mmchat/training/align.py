"""The optional alignment stage before VQA: image-text contrastive (InfoNCE) and image-text matching.

As in ALBEF / BLIP (arXiv:2107.07651, 2201.12086), adapted to a cross-attention fusion model:
- ITC: the mean of the projected patches and the mean of the LM's last hidden states over the
  caption (read without the image) are projected, normalised and matched across the batch.
- ITM: the LM reads the caption *with* cross-attention to the image; a linear head on the last
  token's hidden state says whether caption and image belong together. Negatives are the
  hardest wrong caption in the batch by ITC similarity, so ITM teaches what ITC cannot.
The heads exist only while training; the checkpoint saved afterwards is the plain model.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import IterableDataset

from ..data.shapes import caption, render_scene, sample_scene
from ..modeling.modeling_mmchat import MMChatForConditionalGeneration
from ..modeling.processing_mmchat import MMChatProcessor
from .conversations import _worker_rng


class AlignmentHeads(nn.Module):
    def __init__(self, hidden_size: int, embed_dim: int = 128):
        super().__init__()
        self.image_proj = nn.Linear(hidden_size, embed_dim)
        self.text_proj = nn.Linear(hidden_size, embed_dim)
        self.itm_head = nn.Linear(hidden_size, 2)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP


class ShapesCaptions(IterableDataset):
    """Endless (image, true caption) pairs from the ShapesVQA renderer."""

    def __init__(self, seed: int, sides: tuple[int, ...] = (96, 128, 160, 224, 256)):
        self.seed, self.sides = seed, sides

    def __iter__(self) -> Iterator[tuple[Image.Image, str]]:
        rng: random.Random = _worker_rng(self.seed)
        while True:
            side = rng.choice(self.sides)
            objects = sample_scene(rng, side)
            yield render_scene(objects, rng, side), caption(objects, rng)


class CaptionCollator:
    def __init__(self, processor: MMChatProcessor):
        self.processor = processor

    def __call__(self, pairs: list[tuple[Image.Image, str]]) -> dict[str, torch.Tensor]:
        images, captions = zip(*pairs)
        text = self.processor.tokenizer(list(captions), padding=True, return_tensors="pt", padding_side="right")
        pixels = self.processor.pixel_values(list(images))["pixel_values"]
        return {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"], "pixel_values": pixels}


class AlignmentModel(nn.Module):
    """The model plus its alignment heads, as one module so that DDP sees a single forward."""

    def __init__(self, model: MMChatForConditionalGeneration, embed_dim: int = 128):
        super().__init__()
        self.model = model
        self.heads = AlignmentHeads(model.config.text_config.hidden_size, embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> dict:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        loss, metrics = alignment_loss(self.model, self.heads, batch)
        return {"loss": loss, **metrics}


def _last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    last = mask.sum(1) - 1  # right padding: the last real token of each row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)


def alignment_loss(
    model: MMChatForConditionalGeneration, heads: AlignmentHeads, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    B = ids.shape[0]
    cache = model.encode_images(pixels)
    image_emb = F.normalize(heads.image_proj(cache.image_states.mean(1)), dim=-1)  # (B, E)
    text_hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    pooled = (text_hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D)
    text_emb = F.normalize(heads.text_proj(pooled), dim=-1)
    logits = heads.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T  # (B, B)
    target = torch.arange(B, device=ids.device)
    itc = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    # Hard negatives: for each image, the most similar caption that is not its own.
    with torch.no_grad():
        sim = logits.detach().float().clone()
        sim.fill_diagonal_(float("-inf"))
        negative = sim.argmax(1)  # (B,)
    itm_ids = torch.cat([ids, ids[negative]])
    itm_mask = torch.cat([mask, mask[negative]])
    pixels2 = torch.cat([pixels, pixels])
    hidden = model(input_ids=itm_ids, attention_mask=itm_mask, pixel_values=pixels2,
                   output_hidden_states=True).hidden_states[-1]
    itm_logits = heads.itm_head(_last_token(hidden, itm_mask))  # (2B, 2)
    itm_target = torch.cat([torch.ones(B), torch.zeros(B)]).long().to(ids.device)
    itm = F.cross_entropy(itm_logits, itm_target)
    metrics = {
        "itc": itc.item(),
        "itm": itm.item(),
        "itc_acc": (logits.argmax(1) == target).float().mean().item(),
        "itm_acc": (itm_logits.argmax(1) == itm_target).float().mean().item(),
    }
    return itc + itm, metrics
