"""A family's own `generate` streamed into each of its batch's requests (the one-at-a-time families)."""

from __future__ import annotations

from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from .request import Request


class RowsStreamer(BaseStreamer):
    """generate's streamer protocol into each row's queue; the first `put` is the prompt. A row ends at
    its end-of-turn token or once Stop is seen (later `put`s carry padding for it)."""

    def __init__(self, rows: list[Request], eos: set[int]):
        self.rows = rows
        self.eos = eos
        self.prompt_seen = False
        self.ended = [False] * len(rows)
        self.maps: torch.Tensor | None = None  # (B, N): where this step's tokens were chosen looking

    def looked(self, weights: torch.Tensor) -> None:
        """The family's report of the step whose tokens come next (`FamilyAdapter.generate`)."""
        self.maps = weights.float().cpu()

    def _end(self, i: int, kind: str, value: Any) -> None:
        if not self.ended[i]:
            self.ended[i] = True
            self.rows[i].out.put((kind, value))

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for i, token in enumerate(value.reshape(len(self.rows), -1)[:, -1].tolist()):
            if self.ended[i]:
                continue
            if self.rows[i].cancel.is_set():
                self._end(i, "end", "stopped")
                continue
            if self.maps is not None:  # before the token: a request that sees its end reads its maps
                self.rows[i].attention.append(self.maps[i].clone())
            self.rows[i].emit(token)
            if token in self.eos:  # the reasons the step-by-step rows end with (`Scheduler._advance`)
                self._end(i, "end", "eos")
            elif len(self.rows[i].tokens) >= self.rows[i].settings.max_new_tokens:
                self._end(i, "end", "length")

    def end(self) -> None:
        pass

    def finish(self) -> None:
        for i, r in enumerate(self.rows):
            self._end(i, "end", "stopped" if r.cancel.is_set() else "length")

    def fail(self, error: BaseException, only_started: bool = False) -> None:
        for i, r in enumerate(self.rows):
            if not only_started or r.tokens:
                self._end(i, "error", error)
