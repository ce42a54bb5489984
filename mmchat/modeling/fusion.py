"""Gated cross-attention: how the text tokens of the LM look at the image patches.

A `GatedCrossAttentionBlock` is pre-norm -> cross-attention (text queries, image keys and
values) -> residual scaled by tanh(gate) -> pre-norm -> MLP -> residual scaled by tanh(gate),
with both gates initialised at 0, so a freshly fused LM computes exactly what the LM alone did
(Flamingo, arXiv:2204.14198, section 2.2; Llama 3.2 Vision's cross-attention layers).

`FusedDecoderLayer` puts one block in front of an LM decoder layer. The image reaches it through
the LM forward's keyword arguments as a `CrossAttentionCache`, which also keeps each block's
image keys and values so that generation computes them once per image, not once per token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CrossAttentionCache:
    """The projected image patches of a batch and, per fused layer, their keys and values."""

    image_states: torch.Tensor  # (B, N, D)
    key_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def get(
        self, layer_idx: int, project: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx not in self.key_values:
            self.key_values[layer_idx] = project(self.image_states)
        return self.key_values[layer_idx]


class GatedCrossAttentionBlock(nn.Module):
    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: int = 4, gate_init: float = 0.0, eps: float = 1e-5
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attn_gate = nn.Parameter(torch.full((1,), gate_init))
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_ratio * hidden_size),
            nn.GELU(),
            nn.Linear(mlp_ratio * hidden_size, hidden_size),
        )
        self.mlp_gate = nn.Parameter(torch.full((1,), gate_init))

    def project_kv(self, image_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = image_states.shape
        k = self.k_proj(image_states).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(image_states).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        return k, v  # (B, nh, N, hs) each

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, D)
        key_value: tuple[torch.Tensor, torch.Tensor],
        need_weights: bool = False,
        keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`need_weights`: also the attention map, of every position, or of the last `keep` only."""
        B, T, D = hidden_states.shape
        k, v = key_value
        x = self.attn_norm(hidden_states)
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        q = q.to(v.dtype)
        weights = None
        if need_weights and not 0 < keep < T:
            # Spelled out only when the caller wants the map; SDPA does not return it.
            weights = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)  # (B, nh, T, N)
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
            if need_weights:  # a prompt's map at its last positions only: what generation reads
                weights = torch.softmax((q[:, :, -keep:] @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        y = y.transpose(1, 2).reshape(B, T, D).to(hidden_states.dtype)  # (B, T, D)
        hidden_states = hidden_states + self.attn_gate.tanh().to(hidden_states.dtype) * self.o_proj(y)
        mlp_out = self.mlp(self.mlp_norm(hidden_states))
        hidden_states = hidden_states + self.mlp_gate.tanh().to(hidden_states.dtype) * mlp_out
        return hidden_states, weights


class FusedDecoderLayer(nn.Module):
    """An LM decoder layer with a gated cross-attention block in front; no image, no change."""

    def __init__(self, layer: nn.Module, cross_attn: GatedCrossAttentionBlock, layer_idx: int):
        super().__init__()
        self.cross_attn = cross_attn
        self.layer = layer
        self.layer_idx = layer_idx

    def forward(
        self,
        hidden_states: torch.Tensor,
        *args,
        cross_attention_cache: CrossAttentionCache | None = None,
        cross_attentions: list[torch.Tensor] | None = None,
        cross_attentions_keep: int = 0,
        **kwargs,
    ):
        if cross_attention_cache is not None:
            key_value = cross_attention_cache.get(self.layer_idx, self.cross_attn.project_kv)
            hidden_states, weights = self.cross_attn(
                hidden_states, key_value, need_weights=cross_attentions is not None, keep=cross_attentions_keep
            )
            if cross_attentions is not None:
                cross_attentions.append(weights)
        return self.layer(hidden_states, *args, **kwargs)
