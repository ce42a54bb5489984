"""On a CUDA GPU: nf4 and int8 load with bitsandbytes, answer like bf16, and take less GPU memory.

Skipped (with the reason) where there is no CUDA GPU; `pytest -m gpu` runs only these.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch

from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.loading import DEFAULT_MODEL, load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"),
]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [e for e in json.loads((ROOT / "assets" / "examples.json").read_text()) if "answer" in e]


def load_measured(mode: str):
    """The shipped model loaded in `mode` on the GPU, and the GPU memory its load allocated (bytes)."""
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    adapter = load_model(DEFAULT_MODEL, quantization=mode, device="cuda")
    return adapter, torch.cuda.memory_allocated() - before


@pytest.fixture(scope="module")
def bf16():
    pytest.importorskip("bitsandbytes")
    return load_measured("none")


@pytest.mark.parametrize("mode, linear_class, max_share", [("nf4", "Linear4bit", 0.40), ("int8", "Linear8bitLt", 0.65)])
def test_quantized_on_cuda_answers_like_bf16_in_less_memory(bf16, mode, linear_class, max_share, record_property):
    full, full_bytes = bf16
    adapter, used = load_measured(mode)
    assert adapter.quantization == mode and adapter.model.device.type == "cuda"
    quantized = [m for m in adapter.model.modules() if type(m).__name__ == linear_class]
    assert quantized, f"no bitsandbytes {linear_class} layer in the {mode} model"
    # The real figures, printed (pytest -s) and kept in the JUnit report (record_property).
    mib = {"bf16": full_bytes / 2**20, mode: used / 2**20, f"{mode} footprint": adapter.model.get_memory_footprint() / 2**20}
    record_property(f"gpu_memory_mib_{mode}", mib)
    print(f"GPU memory allocated by the load, MiB: {mib} (share of bf16 {used / full_bytes:.2f})")
    assert used < max_share * full_bytes, f"{mode} allocated {used / full_bytes:.0%} of bf16's GPU memory"
    greedy = GenerationSettings(max_new_tokens=8)
    for example in EXAMPLES:
        image = str(ROOT / "assets" / example["file"])
        assert ChatEngine(adapter).answer(image, example["question"], settings=greedy) == example["answer"]
        assert ChatEngine(full).answer(image, example["question"], settings=greedy) == example["answer"]
