"""One answer to generate, as the scheduler holds it, and how each row's settings choose its tokens."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .settings import GenerationSettings


@dataclass
class Request:
    """One answer to generate; the caller reads `out` ("token", id) ... then ("end", reason) or ("error", e)."""

    prompt: list[int]
    image: Image.Image
    image_key: str
    settings: GenerationSettings  # per request inside a shared batch: greedy or sampling, temperature, top-p, max tokens
    # For families answered one at a time: the model inputs, made by the family.
    inputs: dict[str, torch.Tensor] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    out: queue.Queue = field(default_factory=queue.Queue)
    tokens: list[int] = field(default_factory=list)
    # (N,) cross-attention weights, mean over fused layers and heads, of the position that chose each token
    attention: list[torch.Tensor] = field(default_factory=list)
    # Its first token, if chosen unsure, is chosen again over shifted views (`second_look.py`).
    second_look: bool = False
    # The kind of question (`answer_tree.question_kind`): the answers given to its kind are drafted.
    kind: str | None = None
    # Its image's state when encoded beside the batch, until its prefill takes it (the cache may not hold it).
    image_state: Any = None

    def emit(self, token: int) -> None:
        self.tokens.append(token)
        self.out.put(("token", token))


def choose_tokens(logits: torch.Tensor, rows: list[Request]) -> torch.Tensor:
    """(B, V) logits -> (B,) tokens: argmax for greedy rows; temperature, top-p and a draw for the others."""
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if r.settings.do_sample]
    if not sampled:
        return tokens
    idx = torch.tensor(sampled, device=logits.device)
    temps = torch.tensor([rows[i].settings.temperature for i in sampled], device=logits.device)
    top_p = torch.tensor([rows[i].settings.top_p for i in sampled], device=logits.device)
    scores = logits[idx].float() / temps[:, None]
    # top-p as transformers' TopPLogitsWarper: drop the least likely tokens whose mass is at most 1 - top_p.
    ordered, order = scores.sort(dim=-1)
    drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)[:, None]
    drop[:, -1] = False  # keep at least the most likely token
    scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    tokens[idx] = torch.multinomial(scores.softmax(dim=-1), 1)[:, 0]
    return tokens
