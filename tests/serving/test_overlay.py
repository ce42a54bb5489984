"""The heat-map picture: the image, with the ramp blended in where the model looked."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from mmchat.serving.overlay import heat_layer, overlay_attention, overlay_html


def test_a_hot_cell_is_drawn_over_its_own_part_of_the_image_only() -> None:
    image = Image.new("RGB", (120, 80), (20, 120, 220))  # not square: rows and columns kept apart
    grid = np.zeros((4, 6))
    grid[1, 4] = 1.0  # the cell at rows 20-40, columns 80-100
    out = np.asarray(overlay_attention(image, grid), dtype=float)
    assert out.shape == (80, 120, 3)
    # Hot: base * (1 - alpha) + white * alpha (the ramp's top), alpha = 0.55.
    assert np.abs(out[30, 90] - (np.array([20, 120, 220]) * 0.45 + 255 * 0.55)).max() <= 2
    # Far from it: the image unchanged.
    assert (out[5, 5] == [20, 120, 220]).all() and (out[70, 10] == [20, 120, 220]).all()


def test_each_level_is_its_colour_on_the_ramp_blended_by_how_hot_it_is() -> None:
    base = np.array([200, 40, 90])
    for heat in (0.2, 0.5, 0.9):
        out = np.asarray(overlay_attention(Image.new("RGB", (32, 32), tuple(base)), np.full((3, 3), heat)))
        level = round(heat * 255)
        ramp = np.clip(255 * (3 * level / 255 - np.arange(3)), 0, 255)  # black -> red -> yellow -> white
        weight = round(0.55 * level) / 255
        assert np.abs(out[16, 16] - (base * (1 - weight) + ramp * weight)).max() <= 2, heat


def test_the_heat_layer_laid_over_the_image_blends_as_the_drawn_picture_does() -> None:
    """What the browser shows (the layer stretched over the image, through its alpha) is the picture
    the server would draw, where it is hot and where it is not."""
    image = Image.new("RGB", (120, 80), (20, 120, 220))
    grid = np.zeros((4, 6))
    grid[1, 4] = 1.0
    layer = heat_layer(grid).convert("RGBA").resize(image.size, Image.BILINEAR)  # as a browser stretches it
    shown = image.convert("RGBA")
    shown.alpha_composite(layer)
    drawn = np.asarray(overlay_attention(image, grid), dtype=int)
    shown = np.asarray(shown.convert("RGB"), dtype=int)
    assert np.abs(shown[30, 90] - drawn[30, 90]).max() <= 12  # the hot cell's centre
    assert (shown[5, 5] == [20, 120, 220]).all() and (shown[70, 10] == [20, 120, 220]).all()


def test_the_map_as_html_is_the_image_with_its_layer_over_it() -> None:
    grid = np.random.default_rng(0).random((12, 12))
    snippet = overlay_html("gradio_api/file=/tmp/a b.png", (300, 200), grid, 'the "map"')
    assert snippet.startswith('<div class="mmchat-heat"') and "aspect-ratio:300/200" in snippet
    assert '<img src="gradio_api/file=/tmp/a b.png" alt="the &quot;map&quot;"' in snippet
    data = re.search(r'data:image/png;base64,([^"]+)"', snippet).group(1)
    layer = Image.open(io.BytesIO(base64.b64decode(data)))
    assert layer.size == (96, 96)
    assert np.array_equal(np.asarray(layer.convert("RGBA")), np.asarray(heat_layer(grid).convert("RGBA")))
