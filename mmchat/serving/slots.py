"""The running batch's image states in fixed slots, so rows join and leave without copying the rest.

A batch's image keys/values are most of what a decode step reads (16 rows of a 145-patch image:
about 20 MB over the fused layers), and with short answers rows join and leave nearly every step.
Concatenating the whole batch when someone joins and indexing it when someone leaves copied all of
it each time, a third of the scheduler's time at 16 users. Here row i lives in slot i of buffers
with room for more: a newcomer is written into the next free slot, a row that leaves is filled by
the last row (one row copied), and the batch's images are always a view of the first `n` slots.
"""

from __future__ import annotations

from typing import Any

import torch


class ImageSlots:
    def __init__(self, adapter: Any):
        self.adapter = adapter  # `image_tensors` / `images_from_tensors`: the family's state as tensors, batch first
        self.buffers: list[torch.Tensor] | None = None
        self.template: Any = None
        self.n = 0
        self.current: Any = None  # the view last handed out: the batch that owns the slots holds it

    def clear(self) -> None:
        self.buffers, self.template, self.n, self.current = None, None, 0, None

    def owns(self, images: Any) -> bool:
        """Whether `images` is the slots' current view (else a batch built another way holds it)."""
        return images is not None and images is self.current

    def append(self, states: list[Any]) -> Any:
        """Write `states` (each with a batch dimension) into the next slots; the new view of all rows."""
        parts = [self.adapter.image_tensors(state) for state in states]
        rows = sum(p[0].shape[0] for p in parts)
        if self.template is None:
            self.template = states[0]
        if self.buffers is None or self.n + rows > self.buffers[0].shape[0]:
            self._grow(self.n + rows, parts[0])
        for tensors in parts:
            k = tensors[0].shape[0]
            for buffer, t in zip(self.buffers, tensors):
                buffer[self.n : self.n + k] = t
            self.n += k
        return self._view()

    def reset(self, states: list[Any]) -> Any:
        """Hold `states` in fresh slots (a batch that was built another way, or the first of a busy
        spell). Fresh, not reused: a batch made before may still be looking at the old ones."""
        self.clear()
        return self.append(states)

    def keep(self, keep: list[int]) -> tuple[list[int], Any]:
        """Keep the rows `keep` only: each hole left below the new end is filled by a kept row from
        past it. Returns the kept rows' old indices in their new slot order, and the new view."""
        alive = set(keep)
        n = len(keep)
        holes = [i for i in range(n) if i not in alive]
        movers = [i for i in range(n, self.n) if i in alive]
        order = list(range(n))
        for hole, mover in zip(holes, movers):  # row by row: an indexed gather and scatter copied each twice
            for buffer in self.buffers:
                buffer[hole].copy_(buffer[mover])
            order[hole] = mover
        self.n = n
        return order, self._view()

    def _grow(self, rows: int, like: list[torch.Tensor]) -> None:
        capacity = max(rows, 2 * self.buffers[0].shape[0] if self.buffers else 8)
        grown = [t.new_empty((capacity, *t.shape[1:])) for t in like]
        if self.buffers is not None:
            for new, old in zip(grown, self.buffers):
                new[: self.n] = old[: self.n]
        self.buffers = grown

    def _view(self) -> Any:
        self.current = self.adapter.images_from_tensors(self.template, [b[: self.n] for b in self.buffers])
        return self.current
