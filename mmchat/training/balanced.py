"""A VQA loss in which every answer weighs the same, whatever its length.

A v1 answer is two tokens (a word and the end token); a description is 20-60. With the usual mean
over tokens, a batch where a quarter of the answers are descriptions spends most of its gradient on
them, and the model unlearns what it knew (a fine-tune of the shipped model lost count accuracy
this way). Here each token weighs 1 / (its answer's length), and the loss is the mean over answers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.modeling_mmchat import MMChatForConditionalGeneration
from .conversations import IGNORE_INDEX


def answer_balanced_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V) and labels (B, T) as the model takes them (not yet shifted)."""
    logits, target = logits[:, :-1].float(), labels[:, 1:]  # token t predicts label t+1
    mask = target != IGNORE_INDEX  # (B, T-1)
    per_token = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none",
                                ignore_index=IGNORE_INDEX).view_as(target)
    # An answer is a run of supervised tokens; number the runs per row, then globally.
    starts = mask & ~F.pad(mask[:, :-1], (1, 0), value=False)
    answer = starts.cumsum(-1) + torch.arange(mask.shape[0], device=mask.device)[:, None] * mask.shape[1]
    lengths = torch.bincount(answer[mask])  # tokens per answer id
    weights = 1.0 / lengths[answer[mask]].float()
    n_answers = starts.sum().clamp(min=1)
    return (per_token[mask] * weights).sum() / n_answers


class AnswerBalancedModel(nn.Module):
    """The model with `answer_balanced_loss` in place of its per-token mean (one module, for DDP)."""

    def __init__(self, model: MMChatForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, labels: torch.Tensor, **batch: torch.Tensor) -> dict:
        logits = self.model(**batch).logits  # (B, T, V)
        return {"loss": answer_balanced_loss(logits, labels)}
