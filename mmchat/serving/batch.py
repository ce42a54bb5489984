"""A running batch, and the two ways its shape changes between steps: rows leave (`select_rows`)
and batches join (`merge_batches`). Each row's keys/values are left-padded to the batch's length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .kv import KV
from .request import Request
from .slots import ImageSlots


@dataclass
class Batch:
    """The running rows and their tensors, row i of each tensor being `rows[i]`."""

    rows: list[Request]
    past: KV
    mask: torch.Tensor  # (B, L) 1 where a cached column is a real token
    pos: torch.Tensor  # (B,) position id of each row's next token
    images: Any  # the family's batched image state
    next_tokens: torch.Tensor  # (B,) the token each row feeds next


def select_rows(batch: Batch, keep: list[int], adapter: Any, slots: ImageSlots | None = None) -> Batch:
    """The rows `keep`, with the leading columns that none of them uses cut off. Where `slots` hold
    the batch's images, they keep the rows in place (the rows' order may change with them); else
    the images are copied out."""
    if slots is not None and slots.owns(batch.images):
        keep, images = slots.keep(keep)
    else:
        images = adapter.select_images(batch.images, torch.tensor(keep, device=batch.mask.device))
    idx = torch.tensor(keep, device=batch.mask.device)
    mask = batch.mask[idx]
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    return Batch(
        rows=[batch.rows[i] for i in keep],
        past=[(k[idx, :, start:], v[idx, :, start:]) for k, v in batch.past],
        mask=mask[:, start:],
        pos=batch.pos[idx],
        images=images,
        next_tokens=batch.next_tokens[idx],
    )


def merge_batches(a: Batch, b: Batch, adapter: Any, images: Any = None) -> Batch:
    """Two batches as one: the shorter one's keys/values and mask left-padded to the longer's length.
    `images`: both batches' image states already together (the slots'), else they are stacked."""
    L = max(a.mask.shape[1], b.mask.shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = L - t.shape[dim]
        if n == 0:
            return t
        shape = list(t.shape)
        shape[dim] = n
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    return Batch(
        rows=a.rows + b.rows,
        past=[
            (torch.cat([pad(ka, 2), pad(kb, 2)]), torch.cat([pad(va, 2), pad(vb, 2)]))
            for (ka, va), (kb, vb) in zip(a.past, b.past)
        ],
        mask=torch.cat([pad(a.mask, 1), pad(b.mask, 1)]),
        pos=torch.cat([a.pos, b.pos]),
        images=images if images is not None else adapter.stack_images([a.images, b.images]),
        next_tokens=torch.cat([a.next_tokens, b.next_tokens]),
    )
