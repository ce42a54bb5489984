"""A CPU bf16 model's linear layers with their weights packed once (oneDNN's layout), bit for bit as before."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import mmchat.serving.packed_linear as packed_linear
from mmchat.serving.packed_linear import pack_linear_weights
from mmchat.serving.row_buckets import pad_linear_rows
from mmchat.serving.traced import trace_checked


def _layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 8, bias=False)).to(torch.bfloat16)


def test_packed_layers_give_the_plain_layers_outputs_bit_for_bit():
    layers = _layers()
    plain = copy.deepcopy(layers)
    assert pack_linear_weights(layers) == 2
    assert all(isinstance(layer.forward, functools.partial) for layer in layers[::2])
    assert "0.packed_weight" not in layers.state_dict()  # a serving copy, never saved with the model
    with torch.inference_mode():
        for shape in [(1, 24), (3, 5, 24), (145, 24), (2, 17, 24), (40, 3, 24)]:
            x = torch.randn(shape, dtype=torch.bfloat16)
            got = layers(x)
            assert got.shape == (*shape[:-1], 8)
            assert torch.equal(got, plain(x))


def test_packed_and_padded_layers_run_inside_a_trace_as_they_do_eagerly():
    layers = _layers()
    plain = copy.deepcopy(layers)
    pack_linear_weights(layers)
    pad_linear_rows(layers, warm_rows=16)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = layers

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (self.layers(x),)

    checks = [(torch.randn(rows, 24, dtype=torch.bfloat16),) for rows in (1, 17, 300)]
    graph = trace_checked(Wrapped(), (torch.randn(5, 24, dtype=torch.bfloat16),), checks)
    assert graph is not None  # kept: its outputs equal the eager ones at other row counts
    with torch.inference_mode():
        for (x,) in checks:
            assert torch.equal(graph(x)[0], plain(x))


@pytest.mark.parametrize("broken", ["differs", "missing"])
def test_nothing_is_packed_where_the_packed_call_differs_or_is_missing(monkeypatch, broken):
    if broken == "differs":
        monkeypatch.setattr(packed_linear, "_exact", lambda module: False)
    else:
        def missing(weight: torch.Tensor) -> torch.Tensor:
            raise AttributeError("'_OpNamespace' 'mkldnn' object has no attribute '_reorder_linear_weight'")

        monkeypatch.setattr(packed_linear, "_pack", missing)
    layers = _layers()
    assert pack_linear_weights(layers) == 0
    assert not any(isinstance(m.forward, functools.partial) or hasattr(m, "packed_weight") for m in layers.modules())


def test_fp32_layers_are_left_as_they_are():
    layers = _layers().float()
    assert pack_linear_weights(layers) == 0
    assert not any(hasattr(m, "packed_weight") for m in layers.modules())
