"""A batch's keys/values as the scheduler keeps them, and as transformers' models take them; and
a batch's image state as a flat list of tensors.

Per layer, (keys, values) of shape (B, kv heads, L, head dim): the scheduler pads, joins and
selects rows of these plain tensors; a model's forward takes and returns a `DynamicCache`. An image
state (mmchat's `CrossAttentionCache`, Mllama's) is its leading tensor and each fused layer's image
keys/values: flat, the scheduler's slots hold it, and a traced forward takes it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

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


def image_tensors(state: Any) -> list[torch.Tensor]:
    """An image state's tensors, batch first: its leading tensor, then each layer's keys and values,
    layers in order."""
    lead = getattr(state, fields(state)[0].name)
    return [lead] + [t for layer in sorted(state.key_values) for t in state.key_values[layer]]


def image_state(kind: type, layers: list[int], tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> Any:
    """`image_tensors`' inverse: a state of type `kind` whose fused layers are `layers`, in order."""
    return kind(tensors[0], {layer: (tensors[1 + 2 * i], tensors[2 + 2 * i]) for i, layer in enumerate(layers)})
