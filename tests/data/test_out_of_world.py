"""Out-of-world images by source: what the world gate is trained on and measured with."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mmchat.data import out_of_world
from mmchat.data.out_of_world import HELD_OUT_SOURCES, LATE_HELD_OUT_SOURCES, TRAIN_SOURCES, out_of_world_image


def test_no_source_both_trains_and_measures_the_gate() -> None:
    measured = set(HELD_OUT_SOURCES) | set(LATE_HELD_OUT_SOURCES)
    assert not measured & set(TRAIN_SOURCES)
    assert measured | set(TRAIN_SOURCES) == set(out_of_world.SOURCES)


@pytest.mark.parametrize("source", ["clipart", "emoji"])
def test_drawn_sources_are_varied_and_repeatable(source: str, request) -> None:
    """Light canvases of 96-512 px, a different picture each draw, the same ones from the same seed."""
    if source == "emoji":
        request.getfixturevalue("emoji_font")
    first = [np.asarray(out_of_world_image(source, random.Random(s))) for s in range(6)]
    again = [np.asarray(out_of_world_image(source, random.Random(s))) for s in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(a.ndim == 3 and a.shape[2] == 3 and 96 <= a.shape[0] == a.shape[1] <= 512 for a in first)
    assert len({a.tobytes() for a in first}) == 6
    # Something is drawn on each canvas: more than one colour away from the corner's.
    assert all((np.abs(a.astype(int) - a[0, 0]).max(-1) > 40).mean() > 0.005 for a in first)


def test_the_emoji_source_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(out_of_world, "EMOJI_FONT", tmp_path / "missing.ttf")
    out_of_world._emoji_glyphs.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
            out_of_world_image("emoji", random.Random(0))
    finally:
        out_of_world._emoji_glyphs.cache_clear()
