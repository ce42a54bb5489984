"""Per-object panels under a description: one map per named object, from that phrase's tokens."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from mmchat.serving.overlay import heat_layer
from mmchat.serving.panels import object_grids, object_panels, object_phrases, panel_sheet, panels_html, phrase_tokens


def test_phrases_are_found_in_order_with_their_spans() -> None:
    answer = "There are 2 objects: a Large red circle and a small blue square."
    found = object_phrases(answer)
    assert [p for p, _ in found] == ["large red circle", "small blue square"]
    assert answer[slice(*found[1][1])] == "small blue square"
    assert object_phrases("3") == []


def test_each_object_gets_the_map_of_its_own_tokens() -> None:
    answer = "large red circle, small blue square"
    # One "token" per word, with character offsets, and a grid per token that looks at one corner.
    words = answer.split(" ")
    offsets, start = [], 0
    for w in words:
        offsets.append((start, start + len(w)))
        start += len(w) + 1
    grids = np.zeros((len(words), 4, 4))
    grids[:3, 0, 0] = 1.0  # "large red circle," looked top left
    grids[3:, 3, 3] = 1.0  # "small blue square" looked bottom right
    assert phrase_tokens(offsets, (0, 16)) == [0, 1, 2]
    image = Image.new("RGB", (64, 64), (230, 230, 230))
    panels = object_panels(image, answer, offsets, grids)
    assert [p for p, _ in panels] == ["large red circle", "small blue square"]
    first, second = (np.asarray(o, dtype=float).sum(axis=-1) for _, o in panels)
    assert abs(first[4, 4] - 690) > 30 and abs(first[60, 60] - 690) < 1  # the first map is hot top left only
    assert abs(second[60, 60] - 690) > 30 and abs(second[4, 4] - 690) < 1
    sheet = panel_sheet(panels, tile=64)
    assert sheet.width > 2 * 64 and sheet.height > 64


def test_the_objects_maps_as_html_are_each_objects_own_map_captioned() -> None:
    answer = "large red circle, small blue square"
    offsets = [(0, 5), (6, 9), (10, 17), (18, 23), (24, 28), (29, 35)]
    grids = np.zeros((6, 4, 4))
    grids[:3, 0, 0] = 1.0
    grids[3:, 3, 3] = 1.0
    found = object_grids(answer, offsets, grids)
    assert [p for p, _ in found] == ["large red circle", "small blue square"]
    snippet = panels_html("gradio_api/file=/tmp/s.png", (64, 64), found, tile=100)
    assert snippet.startswith('<div class="mmchat-heat-panels"')
    assert "1. large red circle" in snippet and "2. small blue square" in snippet
    assert snippet.count('src="gradio_api/file=/tmp/s.png"') == 2 and "width:min(100%,100px)" in snippet
    layers = [Image.open(io.BytesIO(base64.b64decode(d))) for d in re.findall(r'data:image/png;base64,([^"]+)"', snippet)]
    assert [np.array_equal(np.asarray(a), np.asarray(heat_layer(g))) for a, (_, g) in zip(layers, found)] == [True, True]
    first, second = (np.asarray(a.getchannel("A")) for a in layers)  # how opaque: how hot
    assert first[0, 0] > 100 > first[-1, -1] and second[-1, -1] > 100 > second[0, 0]
