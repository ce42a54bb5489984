"""A CPU bf16 model's linear layers pad their rows to a few sizes (oneDNN builds a kernel per size)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

import mmchat.serving.families.mmchat as mmchat_family
from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.families import Turn
from mmchat.serving.row_buckets import _bucketed_linear, bucket, pad_linear_rows


def test_rows_pad_to_few_sizes_and_never_to_fewer_rows():
    sizes = {bucket(rows) for rows in range(1, 2049)}
    assert len(sizes) == 40  # 8 up to 128, then 8 per doubling: the kernels stay within oneDNN's cache of 1,024
    for rows in range(1, 5000):
        padded = bucket(rows)
        assert padded >= rows and padded % 16 == 0
        assert padded - rows <= max(15, rows / 8)  # above 128 rows, at most an eighth more work


def test_layers_it_is_told_to_skip_keep_their_rows():
    layers = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8)), nn.Linear(8, 2)).to(torch.bfloat16)
    assert pad_linear_rows(layers, warm_rows=16, skip=[layers[1]]) == 2
    assert not isinstance(layers[1][0].forward, functools.partial)
    assert isinstance(layers[0].forward, functools.partial) and isinstance(layers[2].forward, functools.partial)


def test_a_padded_layer_gives_each_row_its_own_output():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 8, bias=False)).to(torch.bfloat16)
    plain = [(layer.weight.clone(), None if layer.bias is None else layer.bias.clone()) for layer in layers[::2]]
    assert pad_linear_rows(layers, warm_rows=64) == 2
    with torch.inference_mode():
        for shape in [(1, 1, 24), (3, 5, 24), (7, 24), (2, 17, 24), (40, 3, 24)]:
            x = torch.randn(shape, dtype=torch.bfloat16)
            expected = F.linear(F.gelu(F.linear(x, *plain[0])), *plain[1])
            got = layers(x)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-2)


def test_a_bf16_model_on_a_cpu_pads_and_answers_as_it_did(tiny_checkpoint, shapes_image, monkeypatch):
    """The shipped model gave the same answers to 1,000 fresh v1 questions and 200 descriptions with
    its rows padded as without (docs/serving-measurements.md: "Padded rows"); here the tiny one,
    padded and packed against neither, alone and in a batch."""
    settings = GenerationSettings(max_new_tokens=6)
    asked = [("What color is the square?", []), ("How many objects are there?", [Turn("Is there a red square?", "yes")])]

    def answers(engine: ChatEngine) -> list[str]:
        alone = [engine.answer(shapes_image, q, h, settings) for q, h in asked]
        engine.release(shapes_image)
        together = [reply.text() for reply in [engine.submit(shapes_image, q, h, settings) for q, h in asked * 4]]
        engine.close()
        return alone + together

    padded = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16")
    model = padded.adapter.model
    blocks = model.cross_attention_blocks()
    patches_side = [model.vision_model, model.multi_modal_projector, *(b.k_proj for b in blocks), *(b.v_proj for b in blocks)]
    image_side = {id(m) for root in patches_side for m in root.modules()}
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    # The LM's layers pad; those that read the patches keep their rows (images x patches: few sizes).
    # Every one runs on its packed weight (`packed_linear.py`).
    assert all((m.forward.func is _bucketed_linear) == (id(m) not in image_side) for m in layers)
    assert any(id(m) in image_side for m in layers) and any(id(m) not in image_side for m in layers)
    assert all(hasattr(m, "packed_weight") for m in layers)
    assert not any(isinstance(m.forward, functools.partial) for m in padded.adapter.small_model.modules())
    monkeypatch.setattr(mmchat_family, "pad_linear_rows", lambda model, **kwargs: 0)
    monkeypatch.setattr(mmchat_family.MMChatAdapter, "pack_weights", False)
    plain = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16")
    assert not any(isinstance(m.forward, functools.partial) for m in plain.adapter.model.modules())
    assert answers(padded) == answers(plain)
