"""Process-wide serving settings: the start-up heap frozen out of the garbage collector's full passes."""

from __future__ import annotations

import gc
import weakref

from mmchat.serving.process import freeze_start_up_heap


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_start_up_objects_leave_the_collector_and_later_garbage_is_still_freed() -> None:
    alive = Node()  # made at start-up: the model, torch, Gradio
    try:
        assert freeze_start_up_heap() > 0
        assert not any(o is alive for o in gc.get_objects())  # no full collection walks it again
        dropped = Node()  # made while serving, then dropped
        gone = weakref.ref(dropped)
        del dropped
        gc.collect()
        assert gone() is None  # serving's garbage is still collected: no leak
    finally:
        gc.unfreeze()
