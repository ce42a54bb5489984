"""A batch's keys/values as the scheduler keeps them, and as transformers' models take them.

Per layer, (keys, values) of shape (B, kv heads, L, head dim): the scheduler pads, joins and
selects rows of these plain tensors; a model's forward takes and returns a `DynamicCache`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (B, kv heads, L, head dim) keys and values


def to_cache(past: KV | None) -> DynamicCache:
    """Per-layer keys/values as a DynamicCache, without copying them (`update` would concatenate)."""
    if past is None:
        return DynamicCache()
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :0], v[:, :, :0]) for k, v in past])
    for layer, (k, v) in zip(cache.layers, past):
        layer.keys, layer.values = k, v
    return cache


def from_cache(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]
