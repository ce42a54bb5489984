"""FLOPs and the compute limit, for `serve_bench.py`.

The limit is the rate of a large matrix product in the model's dtype, on the whole device at once
(`matmul_flops_per_s`); the engine's figure is its answers/s times the FLOPs an answer takes
(`answer_flops`), against it. Beside the limit, `forwards_alone` times the model's own calls with
nothing else running (an encode of B images, a first turn's prefill of B rows), side by side on
every core: what an engine with no cost of its own would reach, so each run shows how much of the
gap is the engine's and how much the model's small kernels' (`ceiling`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.families import FamilyAdapter, Turn
from mmchat.serving.kv import image_state, image_tensors


def cores_side_by_side(device: str = "cpu") -> int:
    """How many calls run at once to fill the device: on a CPU one per core's worth of torch threads
    (as the engine's lanes do), on a GPU one."""
    if device != "cpu":
        return 1
    return max(1, (os.cpu_count() or 1) // torch.get_num_threads())


def side_by_side(work: Callable[[int], Any], workers: int, repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """The shortest of `repeats` times that `workers` threads take to each run `work(i)` once, all at
    once (the first on this thread). Ops of a traced graph or a matrix product let go of the GIL."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(1, workers)]
        for thread in threads:
            thread.start()
        work(0)
        for thread in threads:
            thread.join()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_flops_per_s(
    device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 20, workers: int | None = None
) -> float:
    """The matmul FLOP/s this device reaches now in the dtype the model computes in, on all of it at
    once: the compute limit. On a CPU, `workers` products side by side, each on a thread of its own
    with the process's torch threads (by default as many as fill the cores, as the engine's lanes
    do: one product on one core read 304-717 GFLOP/s on this 2-core Xeon, two at once 595-699 in
    all). Runs before 2026-12-03 15:05 measured one product, on one core."""
    workers = workers or cores_side_by_side(device)
    n = n if device == "cpu" else 8192
    inner = 4  # products a worker runs per timing, so that starting its thread costs next to nothing
    pairs = [(torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)) for _ in range(workers)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def work(i: int) -> None:
        a, b = pairs[i]
        for _ in range(inner):
            a @ b

    for a, b in pairs:  # each worker's product warm, as before the move
        a @ b
    return workers * inner * 2 * n**3 / side_by_side(work, workers, repeats, sync)


def _count_packed_linears() -> None:
    """Teach torch's FlopCounterMode a packed linear layer (`mmchat.serving.packed_linear`): it knows
    no formula for oneDNN's op and counted none of those layers (115.5 MFLOP an answer, not 245.4)."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or op in flop_registry:
        return

    @register_flop_formula(op)
    def _(x_shape: torch.Size, w_shape: torch.Size, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]  # (rows, in) x (out, in)^T


def counted(fn: Callable[[], Any]) -> tuple[Any, int]:
    """`fn()`'s result and the FLOPs torch's FlopCounterMode counts in it (it does not see inside a
    traced graph: count before `trace`)."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_packed_linears()
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


def answer_flops(
    engine: ChatEngine, convs: list[tuple[Image.Image, list[str]]], settings: GenerationSettings
) -> dict[str, float]:
    """FLOPs the engine's model calls do per answer (image read once per conversation, cached prefixes
    skipped), counted on the scheduler thread: {"encode": the images' encodes, "step": the forwards}."""
    total = {"encode": 0, "step": 0}
    adapter = engine.adapter
    calls = {"step": adapter.step, "encode": adapter.encode_images}

    def counting(name: str) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            out, flops = counted(lambda: calls[name](*args, **kwargs))
            total[name] += flops
            return out

        return run

    adapter.step, adapter.encode_images = counting("step"), counting("encode")
    try:
        answers = 0
        for image, questions in convs:
            history: list[Turn] = []
            for q in questions:
                history.append(Turn(q, engine.answer(image, q, history, settings)))
                answers += 1
    finally:
        adapter.step, adapter.encode_images = calls["step"], calls["encode"]
    return {name: flops / answers for name, flops in total.items()}


def forward_calls(
    adapter: FamilyAdapter, images: list[Image.Image], sizes: tuple[int, ...] = (16, 32, 64), prompt_tokens: int = 13
) -> dict[str, Callable[[], Any]]:
    """name -> a call of the model: the encode of B of `images` (from their pixel values: the image
    processor's 1 ms an image is not the model's) and a first turn's prefill of B rows of
    `prompt_tokens` over their images, recording the heat-map as the engine's do, for each B in
    `sizes`. mmchat's adapter. The calls hold their inputs (about 100 MB for 64 rows): build them
    when they are timed, not for the whole run, whose peak memory is measured."""
    calls: dict[str, Callable[[], Any]] = {}
    pixels = adapter.processor(images=images[: max(sizes)])["pixel_values"].to(adapter.device)
    states = adapter.encode_pixels(pixels)
    for B in sizes:

        def encode(pixels: torch.Tensor = pixels[:B]) -> Any:
            return adapter.encode_pixels(pixels)

        # The B rows' image states joined as the scheduler's slots join them (`kv.image_tensors`).
        joined = image_state(type(states[0]), sorted(states[0].key_values), [torch.cat(ts) for ts in zip(*map(image_tensors, states[:B]))])
        ids = torch.randint(2, 20, (B, prompt_tokens), generator=torch.Generator().manual_seed(B)).to(adapter.device)
        mask = torch.ones_like(ids)
        pos = torch.arange(prompt_tokens, device=adapter.device)[None].expand(B, -1).contiguous()

        def prefill(ids: torch.Tensor = ids, mask: torch.Tensor = mask, pos: torch.Tensor = pos, joined: Any = joined) -> Any:
            return adapter.step(ids, mask, pos, None, joined, True, 1)

        calls[f"encode {B}"], calls[f"prefill {B}x{prompt_tokens}"] = encode, prefill
    return calls


def count_flops(calls: dict[str, Callable[[], Any]]) -> dict[str, int]:
    """name -> the FLOPs of each of `calls` (`forward_calls`), run once eagerly: count before `trace`."""
    return {name: counted(call)[1] for name, call in calls.items()}


def forwards_alone(
    calls: dict[str, Callable[[], Any]], flops: dict[str, int], device: str = "cpu", repeats: int = 5
) -> dict[str, float]:
    """name -> FLOP/s of each of `calls` (`forward_calls`; their `flops`, counted before tracing) run
    side by side on the whole device, a call per core (the best of `repeats`, after one unmeasured)."""
    workers = cores_side_by_side(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rates = {}
    for name, call in calls.items():
        call()
        rates[name] = workers * flops[name] / side_by_side(lambda i, call=call: call(), workers, repeats, sync)
    return rates


def ceiling(flops: dict[str, float], rates: dict[str, float]) -> float:
    """The most FLOP/s an engine with no cost of its own could serve answers at: each part of an
    answer's FLOPs (`answer_flops`) at its fastest rate alone (`forwards_alone`), every forward
    counted at the best prefill's (decode steps run slower: this is an upper bound)."""
    best = {part: max(rate for name, rate in rates.items() if name.startswith(prefix)) for part, prefix in (("encode", "encode"), ("step", "prefill"))}
    return sum(flops.values()) / sum(flops[part] / best[part] for part in flops if flops[part])
