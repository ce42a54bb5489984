"""A VQA loss in which every answer weighs the same, whatever its length.

A v1 answer is two tokens (a word and the end token); a description is 20-60. With the usual mean
over tokens, a batch where a quarter of the answers are descriptions spends most of its gradient on
them, and the model unlearns what it knew (a fine-tune of the shipped model lost count accuracy
this way). Here each token weighs 1 / (its answer's length) ** `power`, and the loss is the sum over
answers divided by their number: at power 1 every answer weighs the same; at 0.5 a 36-token
description weighs 6 times a one-word answer (where the per-token mean makes it 18 times), enough
to keep learning long descriptions without drowning the short answers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.modeling_mmchat import MMChatForConditionalGeneration
from .conversations import IGNORE_INDEX


def answer_balanced_loss(logits: torch.Tensor, labels: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """logits (B, T, V) and labels (B, T) as the model takes them (not yet shifted)."""
    logits, target = logits[:, :-1].float(), labels[:, 1:]  # token t predicts label t+1
    mask = target != IGNORE_INDEX  # (B, T-1)
    per_token = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none",
                                ignore_index=IGNORE_INDEX).view_as(target)
    # An answer is a run of supervised tokens; number the runs per row, then globally.
    starts = mask & ~F.pad(mask[:, :-1], (1, 0), value=False)
    answer = starts.cumsum(-1) + torch.arange(mask.shape[0], device=mask.device)[:, None] * mask.shape[1]
    lengths = torch.bincount(answer[mask])  # tokens per answer id
    weights = lengths[answer[mask]].float().pow(-power)
    n_answers = starts.sum().clamp(min=1)
    return (per_token[mask] * weights).sum() / n_answers


class AnswerBalancedModel(nn.Module):
    """The model with `answer_balanced_loss` in place of its per-token mean (one module, for DDP)."""

    def __init__(self, model: MMChatForConditionalGeneration, power: float = 1.0):
        super().__init__()
        self.model = model
        self.power = power

    def forward(self, labels: torch.Tensor, **batch: torch.Tensor) -> dict:
        logits = self.model(**batch).logits  # (B, T, V)
        return {"loss": answer_balanced_loss(logits, labels, self.power)}
