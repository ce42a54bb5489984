"""A CPU bf16 model's linear layers pad their rows to a few sizes, so that oneDNN builds each kernel once.

On a CPU, PyTorch runs a bf16 linear layer through oneDNN, which builds a kernel for each input
shape it meets and keeps it in a cache (1,024 kernels by default). On this project's 2-core CPU the
first call of a bf16 256 -> 512 layer with a row count it had not met took 1.0-1.7 ms, later calls
0.07-0.18 ms. A serving forward's rows (batch rows x new tokens, or images x patches) take hundreds
of values, and each forward runs about ten layer shapes, so a forward of a new size paid 10-15 ms
more. Padding the rows up to one of a few sizes (multiples of 16 up to 256, then eight sizes per
doubling: above 128 rows at most an eighth more), and building the sizes up to 512 rows when the
model loads, takes that cost out of serving, as GPU engines pad a batch to the sizes they captured
CUDA graphs for. Each output row depends on its own input row alone, so the padding rows are dropped.

Each kernel built holds about 0.65 MiB: for the shipped model the 264 built at load (11 layer
shapes x 24 sizes) take 0.3-0.5 s and 181 MiB. Building all 40 sizes up to 2,048 rows held 310 MiB
for no faster serving; the larger sizes (the widest prefills) are built when first met, each once.

The layers that read image patches (`skip`) keep their rows: those are images x patches, so each
number of images is one size, built once, and padding a 15-image pass (2,175 rows to 2,304) copied
them all for 6 % more work. Exact, 15 images were encoded in a median of 113.0 ms against 123.2
padded, 4 in 36.1 against 38.7 (30 interleaved calls each).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn

from .packed_linear import linear


def bucket(rows: int) -> int:
    """The padded row count: a multiple of 16, and from 256 rows of a sixteenth of the power of two
    above them (eight sizes per doubling)."""
    step = max(16, 1 << max(0, rows.bit_length() - 4))
    return -(-rows // step) * step


def _traced_bucket(rows: torch.Tensor) -> torch.Tensor:
    """`bucket` in tensor ops, for a trace (`traced.py`), where sizes are 0-dim tensors: a trace
    keeps these ops, where Python's integer arithmetic would become the traced size's constant.
    log2 of a power of two is exact in float64, so the floor is the bit length less one."""
    step = torch.clamp(torch.pow(2.0, torch.floor(torch.log2(rows.to(torch.float64))) - 3), min=16).to(torch.long)
    return (rows + step - 1) // step * step


def _bucketed_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    rows, features = x.numel() // shape[-1], shape[-1]
    if torch.jit.is_tracing():  # always padded (by none at a bucket's size): a trace keeps one path
        padded = _traced_bucket(rows)
    else:
        padded = bucket(rows)
        if padded == rows:
            return linear(module, x)
    # One copy of the rows and zeros for the padding only (F.pad filled all of it, then copied: a
    # 16-image ViT pass's 2,320 x 512 rows took 340 us against 218 us this way).
    x = x.reshape(rows, features)
    y = linear(module, torch.cat((x, x.new_zeros(padded - rows, features))))
    return y[:rows].reshape(*shape[:-1], y.shape[-1])


def pad_linear_rows(model: nn.Module, warm_rows: int = 512, skip: Iterable[nn.Module] = ()) -> int:
    """Make every plain `nn.Linear` of `model` (but those in `skip`) pad its rows to `bucket` sizes,
    and build each layer shape's kernels for every bucket up to `warm_rows` now. Returns how many
    layers pad."""
    exact = {id(m) for root in skip for m in root.modules()}
    shapes: dict[tuple, nn.Linear] = {}
    padding = 0
    for module in model.modules():
        # Not quantized or other subclasses: they run their own kernels.
        if type(module) is nn.Linear and id(module) not in exact:
            module.forward = functools.partial(_bucketed_linear, module)
            shapes.setdefault((module.in_features, module.out_features, module.bias is not None), module)
            padding += 1
    sizes = sorted({bucket(rows) for rows in range(1, warm_rows + 1)})
    with torch.inference_mode():
        for module in shapes.values():
            for rows in sizes:
                module(torch.zeros(rows, module.in_features, dtype=module.weight.dtype, device=module.weight.device))
    return padding
