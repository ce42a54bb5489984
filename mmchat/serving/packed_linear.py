"""A CPU bf16 model's linear layers with their weights packed once, in the layout oneDNN's kernels read.

On a CPU, PyTorch runs a bf16 linear layer through oneDNN, whose kernels (AMX tiles, AVX-512 bf16)
read the weight in a blocked layout of their own; handed the plain (out, in) matrix, each call
copies it into that layout first. For this project's small layers that copy is much of a call: on
an Intel Xeon with AMX, alone, a 256 -> 512 layer took 78-82 us for 1-16 rows against 50-55 us
with its weight packed, 114 against 85 us for 64 rows. Packing each weight once, when the model
loads, is what PyTorch's own compiler does when it freezes a bf16 model on a CPU (the same two
oneDNN ops: `mkldnn._reorder_linear_weight`, `mkldnn._linear_pointwise`). The packed call runs the
same kernel on the same sums: its outputs equal the plain call's bit for bit, which `pack_linear_weights`
checks on every layer shape before it packs anything, so answers do not change.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Union  # noqa: UP035 (TorchScript reads these, not the builtin forms)

import torch
import torch.nn.functional as F
from torch import nn

# The row count oneDNN is told to expect when it chooses the blocked layout (any count runs).
ROWS_HINT = 64


@torch.jit.script
def _packed(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP045
    """(rows, in) -> (rows, out). Scripted so that `torch.jit.trace` records the call: the tracer
    cannot take the op's empty list of scalars (its fused activation's, unused here)."""
    scalars = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])  # noqa: UP006, UP007, UP045
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", scalars, "")


def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`: by its packed weight where `pack_linear_weights` gave it one."""
    packed = getattr(module, "packed_weight", None)
    if packed is None:
        return F.linear(x, module.weight, module.bias)
    y = _packed(x.reshape(-1, x.shape[-1]), packed, module.bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)


def _exact(module: nn.Linear) -> bool:
    """Whether the packed call gives the plain one's outputs, bit for bit, at a few row counts."""
    g = torch.Generator().manual_seed(module.in_features)
    packed = _pack(module.weight)
    with torch.inference_mode():
        for rows in (1, 7, 16, 145):
            x = torch.randn(rows, module.in_features, generator=g).to(module.weight.dtype)
            if not torch.equal(_packed(x, packed, module.bias), F.linear(x, module.weight, module.bias)):
                return False
    return True


def pack_linear_weights(model: nn.Module) -> int:
    """Give every plain bf16 `nn.Linear` of a CPU `model` its weight packed (a buffer, not saved
    with the model) and a forward that uses it. Nothing is packed where this torch lacks the ops or
    any layer shape's packed outputs differ from its plain ones. Returns how many layers were packed."""
    layers = [
        m for m in model.modules()
        if type(m) is nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"
    ]
    shapes = {(m.in_features, m.out_features, m.bias is not None): m for m in layers}
    try:
        if not all(_exact(m) for m in shapes.values()):
            return 0
    except (AttributeError, RuntimeError):  # no such ops in this torch, or no kernel for them here
        return 0
    for m in layers:
        m.register_buffer("packed_weight", _pack(m.weight), persistent=False)
        m.forward = functools.partial(linear, m)
    return len(layers)
