"""The heat-map picture: the image, with the ramp blended in where the model looked."""

from __future__ import annotations

import base64
import io
import re
import urllib.parse

import numpy as np
from PIL import Image

from mmchat.serving.overlay import heat_layer, heat_png, overlay_attention, overlay_html


def test_a_hot_cell_is_drawn_over_its_own_part_of_the_image_only() -> None:
    image = Image.new("RGB", (120, 80), (20, 120, 220))  # not square: rows and columns kept apart
    grid = np.zeros((4, 6))
    grid[1, 4] = 1.0  # the cell at rows 20-40, columns 80-100
    out = np.asarray(overlay_attention(image, grid), dtype=float)
    assert out.shape == (80, 120, 3)
    # Hot: base * (1 - alpha * heat) + ramp(heat) * alpha * heat, alpha = 0.55, near the ramp's top
    # (white): stretched bilinearly, the cell's heat at pixel (30, 90), half a pixel from its centre
    # along each axis, is (1 - 0.5 / 20) ** 2.
    heat = (1 - 0.5 / 20) ** 2
    ramp = np.clip(255 * (3 * heat - np.arange(3)), 0, 255)
    assert np.abs(out[30, 90] - (np.array([20, 120, 220]) * (1 - 0.55 * heat) + ramp * 0.55 * heat)).max() <= 2
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


def shown_by_a_browser(image: Image.Image, snippet: str) -> np.ndarray:
    """What a browser shows of `overlay_html`'s map over `image`, by what the snippet carries: the
    layer's alpha stretched bilinearly to the image, the filter's colour matrix and ramp tables
    applied to it, as opaque as the layer's CSS opacity, composed over the image."""
    layer = Image.open(io.BytesIO(base64.b64decode(re.search(r'data:image/png;base64,([^"]+)"', snippet).group(1))))
    rgba = np.concatenate([np.full((*image.size[::-1], 3), 255.0),  # white, premultiplied away
                           np.asarray(layer.getchannel("A").resize(image.size, Image.BILINEAR), dtype=float)[..., None]], -1) / 255
    svg = urllib.parse.unquote(re.search(r"filter:url\('data:image/svg\+xml,([^']+)#ramp'\)", snippet).group(1))
    matrix = np.array(re.search(r'<feColorMatrix type="matrix" values="([^"]+)"', svg).group(1).split(), dtype=float)
    rgba = rgba @ matrix.reshape(4, 5)[:, :4].T  # (H, W, 4)
    tables = [np.array(re.search(rf'<feFunc{c} type="table" tableValues="([^"]+)"', svg).group(1).split(), dtype=float)
              for c in "RGB"]
    color = np.stack([np.interp(rgba[..., k], np.linspace(0, 1, len(t)), t) for k, t in enumerate(tables)], -1) * 255
    alpha = float(re.search(r"opacity:([0-9.]+);filter", snippet).group(1)) * rgba[..., 3:]
    return np.asarray(image, dtype=float) * (1 - alpha) + color * alpha


def test_the_map_the_browser_draws_is_the_picture_the_server_draws() -> None:
    """The layer stretched over the image and coloured by the snippet's own filter is the picture
    the server would draw, where it is hot and where it is not (the real browser: test_browser)."""
    image = Image.new("RGB", (120, 80), (20, 120, 220))
    grid = np.zeros((4, 6))
    grid[1, 4] = 1.0
    shown = shown_by_a_browser(image, overlay_html("x.png", image.size, grid, "map"))
    drawn = np.asarray(overlay_attention(image, grid), dtype=float)
    assert np.abs(shown - drawn).max() <= 3  # every pixel, the hot cell's centre too
    assert np.abs(shown[5, 5] - [20, 120, 220]).max() < 0.5 and np.abs(shown[70, 10] - [20, 120, 220]).max() < 0.5
    image = Image.new("RGB", (96, 96), (200, 40, 90))
    grid = np.random.default_rng(1).random((12, 12))
    shown = shown_by_a_browser(image, overlay_html("x.png", image.size, grid, "map"))
    assert np.abs(shown - np.asarray(overlay_attention(image, grid), dtype=float)).max() <= 3


def test_the_map_as_html_is_the_image_with_its_layer_over_it() -> None:
    grid = np.random.default_rng(0).random((12, 12))
    snippet = overlay_html("gradio_api/file=/tmp/a b.png", (300, 200), grid, 'the "map"')
    assert snippet.startswith('<div class="mmchat-heat"') and "aspect-ratio:300/200" in snippet
    assert '<img src="gradio_api/file=/tmp/a b.png" alt="the &quot;map&quot;"' in snippet
    data = re.search(r'data:image/png;base64,([^"]+)"', snippet).group(1)
    layer = Image.open(io.BytesIO(base64.b64decode(data)))
    assert layer.size == (12, 12) and len(data) < 500  # one pixel a cell
    assert np.array_equal(np.asarray(layer), np.asarray(heat_layer(grid)))
    assert "<svg" not in snippet  # the chat's sanitizer drops an inline filter's primitives


def test_the_layer_written_as_png_is_a_valid_file_of_the_layer_s_pixels() -> None:
    """`heat_png` writes the PNG itself: any reader must take it, checksums and all, as `heat_layer`."""
    rng = np.random.default_rng(2)
    for grid in (rng.random((12, 12)), rng.random((3, 7)) * 1.5 - 0.2, np.zeros((1, 1)), np.ones((16, 9))):
        data = heat_png(grid)
        with Image.open(io.BytesIO(data)) as checked:
            checked.verify()  # the chunks' CRCs
        layer = Image.open(io.BytesIO(data))
        assert layer.mode == "LA" and layer.size == grid.shape[::-1]
        assert np.array_equal(np.asarray(layer), np.asarray(heat_layer(grid)))
