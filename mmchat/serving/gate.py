"""The world gate: what a world-bound model (the default ShapesVQA one) declines as `unanswerable`.

A checkpoint folder may carry `world_gate.json`; the loader reads it beside the weights and the
engine asks the gate before every answer, so the app and `python -m mmchat evaluate` decline
exactly the same things. Two checks:

- the question: the world's grammar (`mmchat.data.phrasing`: every v1 template and v2 form, with
  the world's words). A question that fits no family is declined; one that fits is asked in its
  v1 template, which is what the model was trained on, and always answered.
- the image: a small classifier over cheap pixel statistics (how flat and light the background
  is, how much of the rest is near the world's colours, edges, colour count), trained by
  `python -m mmchat train-gate` on in-world renders against out-of-world images, with whole
  sources held out to measure it. Its weights and threshold are the JSON's.

numpy and Pillow only: nothing here needs the packages the gate was trained with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.phrasing import parse
from .checkpoint_files import read_beside
from .families import Turn

GATE_FILE = "world_gate.json"
UNANSWERABLE = "unanswerable"
_SIDE = 64  # images are read at 64 x 64: enough for a flat background and a few solid shapes
# The world's colours (ShapesVQA's six and easy-vqa's eight), RGB.
PALETTE = np.array(
    [(220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 210, 40), (140, 60, 180), (240, 140, 30),
     (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 0, 0), (128, 128, 128), (0, 128, 128), (165, 42, 42)],
    dtype=np.float32,
)
FEATURES = (
    "background_min", "background_spread", "background_share", "border_background", "background_noise",
    "palette_share", "other_share", "other_of_foreground", "edge_share", "edge_per_foreground", "colour_bins",
    "aspect", "dark_edge", "line_fill", "colour_contact", "inner_texture",
)


def image_features(image: Image.Image) -> np.ndarray:
    """(len(FEATURES),) statistics of an RGB image, each roughly in [0, 1]: `images_features` of one."""
    return images_features([image])[0]


def images_features(images: Sequence[Image.Image]) -> np.ndarray:
    """(len(images), len(FEATURES)) statistics, each image's the same, bit for bit, as alone.

    The engine runs this on its users' threads, beside the scheduler's forwards, once per new image,
    and the images of a burst of new users together (`ChatEngine._in_world`): image by image, 16
    threads made some 300 small numpy calls each, every one giving up the GIL and taking it back,
    and the scheduler waited on them. It is written plane by plane: numpy reduces a trailing axis of
    3 or 14 slowly (the nearest world colour's `min` over a (64, 64, 14) array took 0.5 ms alone).
    Pixels are whole numbers, so every sum of squares below is exact in float32 and the features
    are the same, bit for bit, as the per-pixel form the gate was trained on."""
    sizes = np.array([image.size for image in images], dtype=np.float64)  # (B, 2): width, height
    pixels = np.stack([  # convert would copy an RGB image
        np.asarray((image if image.mode == "RGB" else image.convert("RGB")).resize((_SIDE, _SIDE), Image.BOX))
        for image in images
    ])  # (B, 64, 64, 3) uint8
    B = len(pixels)
    a = pixels.astype(np.float32)
    planes = np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # (B, 3, 64, 64)
    ring = np.ones((_SIDE, _SIDE), bool)
    ring[2:-2, 2:-2] = False
    background = _median(planes[:, :, ring])  # (B, 3): a scene's objects never cover its border for long
    c = planes - background[:, :, None, None]
    dist = np.sqrt(c[:, 0] * c[:, 0] + c[:, 1] * c[:, 1] + c[:, 2] * c[:, 2])  # (B, 64, 64)
    near_bg = dist < 30
    fg = ~near_bg
    # Squared distance to the nearest world colour, |a|^2 - 2 a.p + |p|^2: one (14, 3) x (3, 4096)
    # product an image, then the smallest of 14 planes.
    flat = planes.reshape(B, 3, -1)
    squares = (flat * flat).sum(1)  # (B, 4096)
    to_palette = (squares[:, None] - 2 * (PALETTE @ flat) + (PALETTE * PALETTE).sum(-1)[:, None]).min(1)
    palette = fg & (to_palette.reshape(B, _SIDE, _SIDE) < 60**2)
    other = fg & ~palette
    # Each image's background pixels as (K, 3), pixel by pixel: its std sums in the order trained on.
    residuals = [(a[i] - background[i])[near_bg[i]] for i in range(B)]
    grey = (planes[:, 0] + planes[:, 1] + planes[:, 2]) / 3
    edges = np.zeros_like(grey, dtype=bool)
    edges[:, :, 1:] |= np.abs(np.diff(grey, axis=2)) > 40
    edges[:, 1:, :] |= np.abs(np.diff(grey, axis=1)) > 40
    levels = pixels >> 6  # (B, 64, 64, 3): a // 64 on the whole numbers, without float division
    codes = levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2] + 64 * np.arange(B)[:, None, None]
    bins = np.bincount(codes.ravel(), minlength=64 * B).reshape(B, 64)  # each image's 64 colour bins
    fg_share = fg.mean(axis=(1, 2))
    # Text and chart axes are thin and dark: most of their dark pixels touch an edge; easy-vqa's
    # black shapes are solid. A row or column mostly foreground is an axis or a bar, not a scene.
    dark = grey < 100
    line_fill = np.maximum(fg.mean(axis=1).max(axis=1), fg.mean(axis=2).max(axis=1))
    # A scene's objects are flat and never touch: two far-apart world colours side by side (a face's
    # eyes, a chart's wedges) or a sharp step inside a figure (two pixels in from its edge: marks,
    # stripes, hard shading) are not of it.
    contact = np.zeros(B, np.int64)
    step = np.zeros((B, _SIDE, _SIDE), np.float32)  # the largest channel step to any of the four neighbours
    for axis in (0, 1):
        d = np.diff(planes, axis=axis + 2)  # (B, 3, 63, 64) or (B, 3, 64, 63)
        contact += (np.logical_and(*_neighbours(palette, axis)) & ((d * d).sum(1) > 90**2)).sum(axis=(1, 2))
        d = np.abs(d).max(1)
        after, before = _neighbours(step, axis)
        np.maximum(after, d, out=after)
        np.maximum(before, d, out=before)
    inner = _erode(_erode(fg))
    n_inner = inner.sum(axis=(1, 2))
    edge_share = edges.mean(axis=(1, 2))
    columns = [
        background.min(1) / 255,
        (background.max(1) - background.min(1)) / 255,
        near_bg.mean(axis=(1, 2)),
        near_bg[:, ring].mean(axis=1),
        [min(1.0, r.std() / 32) if r.size else 1.0 for r in residuals],
        palette.mean(axis=(1, 2)),
        other.mean(axis=(1, 2)),
        other.sum(axis=(1, 2)) / np.maximum(1, fg.sum(axis=(1, 2))),
        edge_share,
        np.minimum(1.0, edge_share / np.maximum(fg_share, 0.01)),
        (bins > 0.005 * _SIDE * _SIDE).sum(1) / 64,
        np.minimum(1.0, np.abs(np.log(sizes[:, 0] / sizes[:, 1]))),
        (dark & edges).sum(axis=(1, 2)) / np.maximum(1, dark.sum(axis=(1, 2))),
        line_fill,
        np.minimum(1.0, contact / np.maximum(1, palette.sum(axis=(1, 2)))),
        np.where(n_inner > 0, ((step > 24) & inner).sum(axis=(1, 2)) / np.maximum(1, n_inner), 0.0),
    ]
    return np.stack([np.asarray(column, dtype=np.float32) for column in columns], axis=1)


def _median(rows: np.ndarray) -> np.ndarray:
    """`np.median(rows, axis=-1)`, the same values without its generic machinery (0.17 ms of the
    features' time): each row's middle value, or the mean of its two middle values."""
    mid = rows.shape[-1] // 2
    if rows.shape[-1] % 2:
        return np.partition(rows, mid, axis=-1)[..., mid]
    return np.partition(rows, (mid - 1, mid), axis=-1)[..., mid - 1 : mid + 1].mean(axis=-1)


def _neighbours(mask: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's mask and its next neighbour's along `axis` of the image (one shorter there), for
    a batch of images (B, H, W)."""
    return (mask[:, 1:], mask[:, :-1]) if axis == 0 else (mask[:, :, 1:], mask[:, :, :-1])


def _erode(mask: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours are in `mask` too (the border never is), image by image of (B, H, W)."""
    out = np.zeros_like(mask)
    out[:, 1:-1, 1:-1] = (
        mask[:, 1:-1, 1:-1] & mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2] & mask[:, 1:-1, 2:]
    )
    return out


class WorldGate:
    """Decides, from `world_gate.json`'s contents, what the model answers and what it declines."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        image = config["image"]
        if list(image["features"]) != list(FEATURES):
            raise ValueError(f"{GATE_FILE} was trained on features {image['features']}, this code reads {FEATURES}")
        self.mean, self.scale = np.array(image["mean"], np.float32), np.array(image["scale"], np.float32)
        self.layers = [(np.array(w, np.float32), np.array(b, np.float32)) for w, b in image["layers"]]
        self.threshold = float(image["threshold"])

    @classmethod
    def from_pretrained(cls, source: str | Path) -> WorldGate | None:
        """The gate saved beside a checkpoint (a folder, or a hub repo's file), or None if it has none."""
        config = read_beside(source, GATE_FILE)
        return None if config is None else cls(config)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / GATE_FILE
        path.write_text(json.dumps(self.config, indent=1))
        return path

    def image_scores(self, features: np.ndarray) -> np.ndarray:
        """(n, F) features -> (n,) probability that each image is a scene of this world."""
        x = (features - self.mean) / self.scale
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.tanh(x)
        return 1 / (1 + np.exp(-x[:, 0]))

    def image_in_world(self, image: Image.Image) -> bool:
        return self.images_in_world([image])[0]

    def images_in_world(self, images: Sequence[Image.Image]) -> list[bool]:
        """`image_in_world` of each image, their features computed together; each image scored on
        its own, as alone (a matrix product of many rows may round apart from one row's)."""
        return [bool(self.image_scores(row[None])[0] >= self.threshold) for row in images_features(images)]

    def question(self, question: str) -> str | None:
        """The v1 template to ask for `question`, or None when it fits no family of the world."""
        parsed = parse(question)
        return None if parsed is None else parsed.canonical

    def ask(self, image: Image.Image, question: str) -> str | None:
        """The question to put to the model, or None: the answer is `unanswerable`."""
        asked = self.question(question)
        if asked is None or not self.image_in_world(image):
            return None
        return asked

    def history(self, turns: Sequence[Turn]) -> list[Turn]:
        """Earlier turns as the model saw them: declined ones left out, the rest in their templates."""
        kept = []
        for turn in turns:
            asked = self.question(turn.question)
            if asked is not None and turn.answer.strip() != UNANSWERABLE:
                kept.append(Turn(asked, turn.answer))
        return kept
