"""Load any supported checkpoint, with bitsandbytes quantization, on the device asked for.

    adapter = load_model("models/mmchat-shapes", quantization="nf4", device="auto")

`source` is a local folder or a hub id; the family comes from the config's `model_type`.
"openai:http://HOST:PORT/v1#MODEL_ID" is a model on an OpenAI-compatible chat-completions server
(vLLM, SGLang, TGI, `transformers serve`): nothing is loaded here, the server answers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, BitsAndBytesConfig

from .families import FAMILIES, REMOTE_FAMILIES, FamilyAdapter  # importing them registers mmchat with the Auto classes
from .gate import WorldGate
from .second_look import SecondLook

Quantization = Literal["auto", "nf4", "int8", "none"]
QUANTIZATIONS = ("auto", "nf4", "int8", "none")
DTYPES = ("auto", "bfloat16", "float32")
# The checkpoint that ships with the project; the app and the evaluation CLI default to it.
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "mmchat-shapes"
DEVICES = ("auto", "cpu", "cuda")


class LoadError(RuntimeError):
    """A checkpoint, device or quantization that cannot be served; the message says what to do."""


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in DEVICES[1:]:
        raise LoadError(f"Unknown device {device!r}: use one of {', '.join(DEVICES)}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoadError(f"device={device!r} but this machine has no CUDA GPU: use device='cpu' or 'auto'.")
    return device


def resolve_quantization(quantization: str, device: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise LoadError(f"Unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}.")
    if quantization == "auto":
        # 4-bit where it saves GPU memory; full precision on the CPU, where it is also faster.
        quantization = "nf4" if device.startswith("cuda") else "none"
    if quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise LoadError(
            f"quantization={quantization!r} needs bitsandbytes: `pip install bitsandbytes`, "
            "or load with quantization='none'."
        )
    return quantization


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """This CPU's ways of multiplying bf16 matrices in hardware, as Linux lists its flags: Intel AMX
    (`amx_bf16`), AVX-512's bf16 dot products (`avx512_bf16`: Intel Cooper Lake, AMD Zen 4 and later)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux: no way to tell
        return []
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    return [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags]


def cpu_multiplies_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (`cpu_bf16_flags`); not Linux: full precision."""
    return bool(cpu_bf16_flags(cpuinfo))


def resolve_dtype(dtype: str, device: str, quantization: str, cpu_bf16: bool = False) -> torch.dtype:
    """The weights' dtype. auto: bf16 on a GPU and under bitsandbytes; on a CPU, bf16 for a family
    that allows it (`cpu_bf16`) where the CPU multiplies bf16 in hardware (with AMX a batch-16 prefill
    of the shipped model took 21 ms against 33 in fp32, 5 images through its ViT 23 ms against 37; on
    an AMD EPYC with `avx512_bf16` a bf16 matmul ran at 141 GFLOP/s against 50 in fp32, and 32 users
    got 116 against 88 answers/s), else fp32: without either, bf16 matmuls are emulated and slower."""
    if dtype not in DTYPES:
        raise LoadError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    if dtype != "auto":
        if dtype == "float32" and quantization != "none":
            raise LoadError(f"quantization={quantization!r} computes in bfloat16: use dtype 'auto' or 'bfloat16'.")
        return getattr(torch, dtype)
    if device.startswith("cuda") or quantization != "none" or (cpu_bf16 and cpu_multiplies_bf16()):
        return torch.bfloat16
    return torch.float32


def quantization_config(quantization: str, skip_modules: list[str] | None = None) -> BitsAndBytesConfig | None:
    """The one BitsAndBytesConfig for a mode; `skip_modules` stay in full precision."""
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=skip_modules,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    return None


def load_model(
    source: str | Path, quantization: Quantization = "auto", device: str = "auto", dtype: str = "auto"
) -> FamilyAdapter:
    """Load `source` (local folder or hub id) as the adapter of its family, or connect to a model server.
    `dtype`: the weights' precision where not quantized ("auto", "bfloat16", "float32"; see `resolve_dtype`)."""
    for prefix, remote in REMOTE_FAMILIES.items():
        if str(source).startswith(prefix):
            # The server holds the model: its quantization and devices are the server's own settings.
            try:
                return remote.from_source(str(source))
            except ValueError as e:
                raise LoadError(str(e)) from e
    device = resolve_device(device)
    quantization = resolve_quantization(quantization, device)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise LoadError(
            f"Cannot load a model from {str(source)!r}: give a folder holding config.json or a hub id "
            f"(the hub must be reachable). ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    adapter_class = FAMILIES.get(config.model_type)
    if adapter_class is None:
        supported = ", ".join(sorted(FAMILIES))
        raise LoadError(f"{source} is a {config.model_type!r} model; mmchat serves: {supported}.")
    torch_dtype = resolve_dtype(dtype, device, quantization, adapter_class.cpu_bf16)

    model = adapter_class.model_class.from_pretrained(
        source,
        dtype=torch_dtype,
        device_map={"": device},
        quantization_config=quantization_config(quantization, adapter_class.skip_modules.get(quantization)),
    ).eval()
    processor = adapter_class.processor_class.from_pretrained(source)
    adapter = adapter_class(model, processor)
    adapter.source, adapter.quantization, adapter.device_name = str(source), quantization, device
    adapter.dtype_name = str(torch_dtype).removeprefix("torch.")
    # A world-bound checkpoint says what it declines (`world_gate.json`, mmchat.serving.gate).
    adapter.world_gate = WorldGate.from_pretrained(source)
    # And which questions it asks again of shifted views when unsure (`second_look.json`).
    adapter.second_look = SecondLook.from_pretrained(source)
    return adapter
