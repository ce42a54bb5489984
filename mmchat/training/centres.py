"""An auxiliary training loss that teaches the image patches where each object's centre is.

Why: cross-attention is a softmax, a weighted *average* over the patches, so a question like
"How many red objects are there?" is most easily answered from how much of the image is red.
The model shipped before the count stages leaned that way (`python -m mmchat count-probe`): 83 % right
when all the counted objects were small, 75 % when one was large, and three in four of its wrong
answers counted too many. Counting objects rather than area needs one mark per object, whatever
its size. The renderer knows where every object's centre is, so a linear head on the projected
patches (the keys and values every fused layer reads) is trained to say, for each patch, "no
centre here" or which kind of object (colour, shape, size) has its centre there; "how many" can
then be read as the share of the fixed number of patches that carry a matching mark.
The head exists only while training (like the alignment heads); the saved checkpoint is the
plain model. In its one trial (1,000 steps from the shipped model, weight 0.25) it did not help:
the head found the right number of centres in about 5 % of images, and counting scored 83.8 %
on the count probe against 86.8 % for the same run without it (the model card has the details).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.modeling_mmchat import MMChatForConditionalGeneration
from .conversations import IGNORE_INDEX, KINDS


def centre_grid(model: MMChatForConditionalGeneration) -> int:
    """Patches per image side: a ViT's input side over its patch size."""
    vision = model.config.vision_config
    if not hasattr(vision, "patch_size"):
        raise ValueError(f"the centre loss needs a ViT's patch grid; this model's vision tower is {vision.model_type}")
    return vision.image_size // vision.patch_size


class CentreModel(nn.Module):
    """The model plus its centre head, as one module so that DDP sees a single forward."""

    def __init__(self, model: MMChatForConditionalGeneration, weight: float = 1.0):
        super().__init__()
        self.model = model
        self.weight = weight
        self.head = nn.Linear(model.config.text_config.hidden_size, 1 + len(KINDS))

    def forward(self, centre_targets: torch.Tensor, pixel_values: torch.Tensor, **batch: torch.Tensor) -> dict:
        cache = self.model.encode_images(pixel_values)  # computed once: the VQA loss reads it too
        vqa = self.model(**batch, cross_attention_cache=cache).loss
        patches = cache.image_states[:, -centre_targets.shape[1]:]  # (B, h*w, D), after a ViT's CLS
        centre, metrics = centre_loss(self.head(patches).float(), centre_targets)
        return {"loss": vqa + self.weight * centre, "vqa_loss": vqa.item(), **metrics}


def centre_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy over the empty patches and over the centre patches, each averaged on its own
    (about 3 centres against 141 empty patches: a plain mean would barely see the centres)."""
    per_patch = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    per_patch = per_patch.view_as(targets)
    empty, centres = targets == 0, targets > 0
    loss = logits.sum() * 0.0  # stays a graph node when a batch has no scene (easy-vqa only)
    if empty.any():
        loss = loss + per_patch[empty].mean()
    if centres.any():
        loss = loss + per_patch[centres].mean()
    metrics: dict[str, float] = {"centre_loss": round(loss.item(), 4)}
    scene_rows = (targets != IGNORE_INDEX).all(1)
    if scene_rows.any():
        predicted = logits.argmax(-1)[scene_rows]  # (S, h*w)
        found = (predicted > 0).sum(1) == (targets[scene_rows] > 0).sum(1)
        metrics["centre_count_acc"] = round(found.float().mean().item(), 4)
    return loss, metrics
