"""Process-wide settings a serving process chooses once at start-up (app.py, the serving benchmark)."""

from __future__ import annotations

import gc
import sys

import torch


def configure_process(threads: int = 1, switch_interval_s: float = 0.0005) -> None:
    """torch's CPU threads, how long a Python thread may hold the GIL while others wait, and
    denormal floats flushed to zero.

    Every request's thread (decoding its tokens, the world gate, drawing its heat-map) shares the
    GIL with the scheduler thread, which gives it up around each torch op. At Python's default
    interval (5 ms) the scheduler waited that long, op after op, whenever a request thread held it:
    16 users at once got 23-28 answers/s at 5 ms and 33-38 at 0.5 or 0.1 ms (engine, this 2-core CPU).
    """
    if threads > 0:
        # On a small or shared CPU one thread is fastest: a batch-16 decode step took 8-14 ms on one
        # thread and 180-390 ms on two, the threads of each op waiting on one another.
        torch.set_num_threads(threads)
    if switch_interval_s > 0:
        sys.setswitchinterval(switch_interval_s)
    # A trained model's attention is peaked: exp() of its far-off scores lands in denormal floats,
    # which x86 computes many times slower (a batch-16 decode step spent a quarter of its time in
    # four small softmaxes). Flushed, they are zero, as they round to in the softmax anyway.
    torch.set_flush_denormal(True)


def freeze_start_up_heap() -> int:
    """Leave every object alive at the end of start-up out of the garbage collector's full passes.

    torch, transformers, Gradio and the model leave about 550,000 objects that live as long as the
    process. A full collection walked all of them, holding the GIL, so every request waited: in the
    app at 16 users one came about every 20 s and took 70-450 ms, longer as serving's caches filled.
    Frozen (`gc.freeze`, after one collection of start-up's garbage), a full pass walks only what
    serving made since: 33-96 ms, about every 5 s (the collector starts one when the objects it
    tracks have grown by a quarter, and it no longer counts the frozen ones). Returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
