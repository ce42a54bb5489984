"""Loading with quantization: nf4 and int8 on the CPU, errors that say what to do."""

from __future__ import annotations

import pytest
import torch

from mmchat.serving.loading import LoadError, cpu_multiplies_bf16, load_model, resolve_dtype


def logits(adapter, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (2, 9), generator=g)
    px = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        return adapter.model(input_ids=ids, pixel_values=px).logits.float()


@pytest.fixture(scope="module")
def full(tiny_checkpoint):
    return load_model(tiny_checkpoint, quantization="none", device="cpu", dtype="float32")


@pytest.mark.parametrize("mode, min_cosine, max_share", [("nf4", 0.95, 0.30), ("int8", 0.995, 0.45)])
def test_quantized_load_is_close_and_smaller(tiny_checkpoint, full, mode, min_cosine, max_share):
    pytest.importorskip("bitsandbytes")
    quantized = load_model(tiny_checkpoint, quantization=mode, device="cpu")
    assert quantized.quantization == mode
    ref, got = logits(full), logits(quantized)
    cosine = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0).item()
    assert cosine > min_cosine, f"{mode} logits drifted: cosine {cosine:.4f}"
    # Same greedy answer to most positions: what a user would see.
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() > 0.7
    share = quantized.model.get_memory_footprint() / full.model.get_memory_footprint()
    assert share < max_share, f"{mode} uses {share:.0%} of the fp32 memory"


def test_auto_picks_the_gpu_in_nf4_or_the_cpu_in_full_precision(full, tiny_checkpoint):
    adapter = load_model(tiny_checkpoint, device="auto")
    expected = ("nf4", "cuda") if torch.cuda.is_available() else ("none", "cpu")
    assert (adapter.quantization, adapter.device_name) == expected


def test_cpu_precision_follows_the_hardware(tiny_checkpoint, full):
    """bf16 weights where the CPU multiplies bf16 in hardware (AMX, AVX-512 bf16), fp32 elsewhere; either on request."""
    auto = load_model(tiny_checkpoint, quantization="none", device="cpu")
    expected = torch.bfloat16 if cpu_multiplies_bf16() else torch.float32
    assert auto.model.dtype == expected and auto.dtype_name == str(expected).removeprefix("torch.")
    assert full.model.dtype == torch.float32
    forced = load_model(tiny_checkpoint, quantization="none", device="cpu", dtype="bfloat16")
    assert forced.model.dtype == torch.bfloat16
    # bf16 weights answer as fp32 ones do, nearly: the same greedy token at most positions.
    ref, got = logits(full), logits(forced)
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() > 0.9
    # Families not measured in bf16 (BLIP, Mllama) stay fp32 on every CPU.
    assert resolve_dtype("auto", "cpu", "none", cpu_bf16=False) == torch.float32


def test_bf16_hardware_is_read_from_the_cpu_flags(tmp_path):
    flags = {"amx": "fpu avx512f amx_bf16 amx_tile", "zen4": "fpu avx512f avx512_bf16", "plain": "fpu avx2 avx512f"}
    for name, line in flags.items():
        (tmp_path / name).write_text(f"processor\t: 0\nflags\t\t: {line}\n")
    assert cpu_multiplies_bf16(tmp_path / "amx") and cpu_multiplies_bf16(tmp_path / "zen4")
    assert not cpu_multiplies_bf16(tmp_path / "plain")  # emulated bf16: fp32 is faster
    assert not cpu_multiplies_bf16(tmp_path / "missing")  # not Linux: full precision


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU, so device='cuda' is valid")
def test_cuda_without_a_gpu_says_so(tiny_checkpoint):
    with pytest.raises(LoadError, match="no CUDA GPU"):
        load_model(tiny_checkpoint, device="cuda")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantization": "fp3"}, "Unknown quantization 'fp3'"),
        ({"device": "tpu"}, "Unknown device"),
        ({"dtype": "float16"}, "Unknown dtype 'float16'"),
        ({"dtype": "float32", "quantization": "nf4"}, "computes in bfloat16"),
    ],
)
def test_bad_combinations_get_clear_errors(tiny_checkpoint, kwargs, message):
    with pytest.raises(LoadError, match=message):
        load_model(tiny_checkpoint, **kwargs)


def test_missing_checkpoint_says_what_to_give(tmp_path):
    with pytest.raises(LoadError, match="folder holding config.json or a hub id"):
        load_model(tmp_path / "nowhere", device="cpu")


def test_unsupported_family_is_named(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(LoadError, match="'gpt2' model; mmchat serves"):
        load_model(tmp_path, device="cpu")
