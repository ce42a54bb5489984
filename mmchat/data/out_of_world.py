"""Images and questions outside the ShapesVQA world, for the boundary (`unanswerable`, spec version 2).

Images come by *source*, so that a gate can be trained on some and measured on others it never
saw (a gate tuned on the images it is scored on proves nothing):

- photos that ship in PyPI packages: `skimage` (scikit-image's data), `sklearn` (its two sample
  images), `matplotlib` (its sample photos), `gradio` (its media assets);
- drawn here: `charts` (matplotlib line, bar, scatter, pie, histogram), `text` (pages of words),
  `ui` (screenshot-like windows with bars, buttons and text), `icons` (faces, stars, arrows,
  hearts, rings), `patterns` (stripes, checkerboards, gradients, grids), `noise`, `clipart`
  (figures shaded, outlined or marked, free to overlap, on a light canvas), `emoji` (Noto Color
  Emoji glyphs on a light canvas; needs Debian's `fonts-noto-color-emoji`).

Every photo is used through random crops and resizes, so one photo gives many images. The
packages are needed only to build sets (`requirements-dev.txt`), never to serve.

Questions: `DEV_QUESTIONS` (used while writing the question grammar and its tests) and
`HELD_OUT_QUESTIONS` (used only to measure), both about things this world does not have.

    python -m mmchat out-of-world --out data/oow-test --sources gradio sklearn charts --images 200 --seed 7
    python -m mmchat out-of-world --out data/oowq-test --questions held-out --images 100 --seed 8

Both write the VQA v2 layout with the answer `unanswerable`, so `python -m mmchat evaluate`
scores them as it scores any set.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .shapes import ALL_FAMILIES, COLORS, FAMILIES, QuestionSampler, render_scene, sample_scene

UNANSWERABLE = "unanswerable"

# --------------------------------------------------------------------------- photos


@cache
def _photos(source: str) -> tuple[Image.Image, ...]:
    if source == "skimage":
        import skimage.data as d

        names = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "grass",
                 "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms",
                 "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")
        arrays = [getattr(d, n)() for n in names]
        return tuple(_to_rgb(Image.fromarray(np.asarray(a if a.dtype == np.uint8 else 255 * a, np.uint8))) for a in arrays)
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        return tuple(Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg"))
    if source == "matplotlib":
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "sample_data"
        return tuple(_to_rgb(Image.open(folder / n)) for n in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"))
    if source == "gradio":
        import gradio

        folder = Path(gradio.__file__).parent / "media_assets" / "images"
        return tuple(_to_rgb(Image.open(p)) for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif"))
    raise ValueError(source)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")


def _crop_resize(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop (a quarter of the photo to all of it, any aspect 1:2 to 2:1), resized to 64-512 px."""
    w, h = image.size
    if rng.random() < 0.3:
        box = (0, 0, w, h)
    else:
        scale, aspect = rng.uniform(0.5, 1.0), math.exp(rng.uniform(-0.7, 0.7))
        cw = max(16, min(w, int(w * scale * math.sqrt(aspect))))
        ch = max(16, min(h, int(h * scale / math.sqrt(aspect))))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        box = (x, y, x + cw, y + ch)
    crop = image.crop(box)
    side = rng.randint(64, 512)
    if rng.random() < 0.5:  # square, as a scene is
        return crop.resize((side, side), Image.BILINEAR)
    ratio = crop.width / crop.height
    return crop.resize((max(16, int(side * min(1, ratio))), max(16, int(side / max(1, ratio)))), Image.BILINEAR)


def _photo_source(name: str) -> Callable[[random.Random], Image.Image]:
    return lambda rng: _crop_resize(rng.choice(_photos(name)), rng)


# --------------------------------------------------------------------------- drawn here

_WORDS = ("the quick brown fox jumps over a lazy dog model image question answer shapes world data "
          "report total sales chart value page figure table north south weather monday coffee").split()


def _light(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(215, 255) for _ in range(3))


def _any_colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(0, 255) for _ in range(3))


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_page(rng: random.Random) -> Image.Image:
    side = rng.randint(96, 512)
    image = Image.new("RGB", (side, int(side * rng.uniform(0.7, 1.4))), _light(rng))
    draw = ImageDraw.Draw(image)
    size = rng.randint(8, 28)
    ink = (rng.randint(0, 80),) * 3 if rng.random() < 0.7 else _any_colour(rng)
    y = rng.randint(2, 20)
    while y < image.height:
        draw.text((rng.randint(2, 20), y), " ".join(rng.choices(_WORDS, k=12)), fill=ink, font=_font(size))
        y += int(size * rng.uniform(1.2, 1.8))
    return image


def _chart(rng: random.Random) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(rng.uniform(2, 6), rng.uniform(2, 5)), dpi=rng.choice((50, 72, 100)))
    kind = rng.choice(("line", "bar", "scatter", "pie", "hist"))
    x = np.arange(rng.randint(4, 12))
    np_rng = np.random.default_rng(rng.getrandbits(32))
    if kind == "line":
        for _ in range(rng.randint(1, 3)):
            ax.plot(x, np_rng.normal(size=len(x)).cumsum(), marker=rng.choice(("", "o", "s")))
    elif kind == "bar":
        ax.bar(x, np_rng.uniform(1, 10, len(x)), color=rng.choice((None, "C1", "C2", "C3")))
    elif kind == "scatter":
        ax.scatter(np_rng.normal(size=40), np_rng.normal(size=40), c=np_rng.integers(0, 4, 40), cmap="tab10")
    elif kind == "pie":
        ax.pie(np_rng.uniform(1, 5, rng.randint(3, 6)))
    else:
        ax.hist(np_rng.normal(size=300), bins=rng.randint(5, 30))
    if kind != "pie":
        ax.set_title(" ".join(rng.choices(_WORDS, k=3)))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _to_rgb(Image.open(buffer))


def _ui(rng: random.Random) -> Image.Image:
    w, h = rng.randint(160, 512), rng.randint(120, 512)
    image = Image.new("RGB", (w, h), _light(rng) if rng.random() < 0.7 else (rng.randint(20, 60),) * 3)
    draw = ImageDraw.Draw(image)
    bar = _any_colour(rng)
    draw.rectangle((0, 0, w, rng.randint(12, 30)), fill=bar)
    draw.text((6, 3), " ".join(rng.choices(_WORDS, k=3)), fill=(255, 255, 255), font=_font(rng.randint(9, 16)))
    y = 40
    while y < h - 20:
        kind = rng.random()
        if kind < 0.4:
            draw.text((10, y), " ".join(rng.choices(_WORDS, k=6)), fill=(30, 30, 30), font=_font(rng.randint(9, 16)))
        elif kind < 0.7:
            x0 = rng.randint(5, w // 2)
            draw.rounded_rectangle((x0, y, x0 + rng.randint(40, 120), y + 20), radius=rng.randint(0, 8),
                                   fill=_any_colour(rng), outline=(90, 90, 90))
            draw.text((x0 + 6, y + 4), rng.choice(_WORDS), fill=(0, 0, 0), font=_font(11))
        else:
            draw.rectangle((10, y, w - 10, y + rng.randint(10, 40)), outline=(150, 150, 150), fill=_light(rng))
        y += rng.randint(18, 40)
    return image


def _icon(rng: random.Random) -> Image.Image:
    side = rng.randint(64, 384)
    image = Image.new("RGB", (side, side), _light(rng) if rng.random() < 0.8 else _any_colour(rng))
    draw = ImageDraw.Draw(image)
    c, r = side / 2, side * rng.uniform(0.25, 0.45)
    kind = rng.choice(("face", "star", "arrow", "heart", "ring", "cross"))
    fill, ink = _any_colour(rng), (rng.randint(0, 60),) * 3
    if kind == "face":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=(250, 205, 40), outline=ink, width=max(1, side // 60))
        for dx in (-0.35, 0.35):
            draw.ellipse((c + dx * r - r / 8, c - r / 3 - r / 8, c + dx * r + r / 8, c - r / 3 + r / 8), fill=ink)
        draw.arc((c - r / 2, c - r / 4, c + r / 2, c + r / 2), 20, 160, fill=ink, width=max(1, side // 40))
    elif kind == "star":
        points = [(c + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5),
                   c - (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5)) for i in range(10)]
        draw.polygon(points, fill=fill, outline=ink)
    elif kind == "arrow":
        draw.polygon([(c - r, c - r / 4), (c, c - r / 4), (c, c - r / 1.5), (c + r, c), (c, c + r / 1.5),
                      (c, c + r / 4), (c - r, c + r / 4)], fill=fill)
    elif kind == "heart":
        draw.ellipse((c - r, c - r / 2, c, c + r / 3), fill=fill)
        draw.ellipse((c, c - r / 2, c + r, c + r / 3), fill=fill)
        draw.polygon([(c - r * 0.95, c), (c + r * 0.95, c), (c, c + r)], fill=fill)
    elif kind == "ring":
        draw.ellipse((c - r, c - r, c + r, c + r), outline=fill, width=max(2, int(r / 4)))
    else:
        draw.rectangle((c - r / 4, c - r, c + r / 4, c + r), fill=fill)
        draw.rectangle((c - r, c - r / 4, c + r, c + r / 4), fill=fill)
    return image


def _clipart_item(rng: random.Random, size: int) -> Image.Image:
    """One filled figure (RGBA, `size` square) that no scene has: shaded, outlined, with marks inside."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    kind = rng.choice(("ellipse", "rounded", "polygon"))
    if kind == "ellipse":
        draw.ellipse((0, rng.randint(0, size // 4), size - 1, size - 1), fill=255)
    elif kind == "rounded":
        draw.rounded_rectangle((0, 0, size - 1, size - 1), radius=rng.randint(size // 8, size // 3), fill=255)
    else:
        n, c = rng.randint(3, 9), size / 2
        draw.polygon([(c + c * rng.uniform(0.5, 1) * math.cos(2 * math.pi * i / n),
                       c + c * rng.uniform(0.5, 1) * math.sin(2 * math.pi * i / n)) for i in range(n)], fill=255)
    # At least one trait no scene has (a flat figure alone differs from a scene's only by its shape,
    # which pixel statistics cannot see): shading, marks inside, an outline.
    shaded, marked, outlined = (rng.random() < 0.6 for _ in range(3))
    if not (shaded or marked or outlined):
        shaded = True
    colour = np.array(rng.choice(list(COLORS.values())) if rng.random() < 0.5 else _any_colour(rng), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    light = 1 + rng.uniform(0.3, 0.8) * (0.5 - np.hypot(xx - rng.uniform(0.2, 0.5), yy - rng.uniform(0.2, 0.5)))
    pixels = np.clip(colour * light[..., None], 0, 255) if shaded else np.broadcast_to(colour, (size, size, 3))
    item = Image.fromarray(pixels.astype(np.uint8), "RGB").convert("RGBA")
    item.putalpha(mask)
    marks = ImageDraw.Draw(item)
    ink = (rng.randint(0, 70),) * 3 + (255,)
    if marked:  # eyes and a mouth, stripes or a patch of another colour
        detail = rng.choice(("face", "stripes", "patch"))
        if detail == "face":
            for x in (0.35, 0.65):
                marks.ellipse((size * (x - 0.06), size * 0.35, size * (x + 0.06), size * 0.5), fill=ink)
            marks.arc((size * 0.3, size * 0.45, size * 0.7, size * 0.75), 20, 160, fill=ink, width=max(1, size // 20))
        elif detail == "stripes":
            for y in range(rng.randint(2, 4)):
                y0 = size * (0.25 + 0.2 * y)
                marks.line((size * 0.15, y0, size * 0.85, y0), fill=_any_colour(rng) + (255,), width=max(1, size // 14))
        else:
            x0, y0 = rng.uniform(0.2, 0.5) * size, rng.uniform(0.2, 0.5) * size
            marks.ellipse((x0, y0, x0 + size * 0.3, y0 + size * 0.3), fill=_any_colour(rng) + (255,))
        item.putalpha(Image.fromarray(np.minimum(np.asarray(mask), np.asarray(item.getchannel("A")))))
    if outlined:
        outline = Image.new("RGBA", (size, size), ink)
        edge = np.asarray(mask, np.int16)
        ring = (edge > 0) & ((np.abs(np.diff(edge, axis=0, prepend=0)) > 0) | (np.abs(np.diff(edge, axis=1, prepend=0)) > 0))
        width = max(1, size // 30)
        ring_image = Image.fromarray((ring * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(2 * width + 1))
        outline.putalpha(Image.fromarray(np.minimum(np.asarray(ring_image), np.asarray(mask))))
        item = Image.alpha_composite(item, outline)
    return item


def _canvas(rng: random.Random) -> Image.Image:
    """A square of 96-512 px, light (or, one time in seven, any colour), as a scene's background is."""
    side = rng.randint(96, 512)
    return Image.new("RGB", (side, side), _light(rng) if rng.random() < 0.85 else _any_colour(rng))


def _clipart(rng: random.Random) -> Image.Image:
    """1-5 shaded, outlined or marked figures, free to overlap, on a light canvas: drawn like a scene
    of this world's objects but not one (a training source for the gate's image check)."""
    image = _canvas(rng)
    side = image.width
    for _ in range(rng.randint(1, 5)):
        size = max(12, int(side * rng.uniform(0.15, 0.45)))
        item = _clipart_item(rng, size)
        image.paste(item, (rng.randint(0, side - size), rng.randint(0, side - size)), item)
    return image


def _pattern(rng: random.Random) -> Image.Image:
    side = rng.randint(64, 512)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    a, b = np.array(_any_colour(rng), np.float32), np.array(_any_colour(rng), np.float32)
    kind = rng.choice(("stripes", "checker", "gradient", "grid", "dots", "flat"))
    period = rng.randint(4, max(5, side // 3))
    if kind == "stripes":
        angle = rng.uniform(0, math.pi)
        t = ((xx * math.cos(angle) + yy * math.sin(angle)) // period % 2)[..., None]
    elif kind == "checker":
        t = ((xx // period + yy // period) % 2)[..., None]
    elif kind == "gradient":
        t = ((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / side)[..., None]
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif kind == "grid":
        t = (((xx % period) < 2) | ((yy % period) < 2)).astype(np.float32)[..., None]
    elif kind == "dots":
        t = (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 4) ** 2)
        t = t.astype(np.float32)[..., None]
    else:  # one flat colour, dark or saturated: not a light background
        a = np.array([rng.randint(0, 160), rng.randint(0, 255), rng.randint(0, 255)], np.float32)
        t = np.zeros((side, side, 1), np.float32)
        b = a
    return Image.fromarray(np.clip(a * (1 - t) + b * t, 0, 255).astype(np.uint8), "RGB")


def _noise(rng: random.Random) -> Image.Image:
    side = rng.randint(64, 512)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    kind = rng.choice(("uniform", "gaussian", "blobs", "grey"))
    if kind == "uniform":
        pixels = np_rng.integers(0, 256, (side, side, 3))
    elif kind == "gaussian":
        pixels = np_rng.normal(rng.uniform(60, 200), rng.uniform(20, 80), (side, side, 3))
    elif kind == "grey":
        pixels = np.repeat(np_rng.normal(rng.uniform(60, 200), rng.uniform(20, 80), (side, side, 1)), 3, axis=2)
    else:  # low-frequency colour blobs
        small = np_rng.integers(0, 256, (rng.randint(2, 8), rng.randint(2, 8), 3)).astype(np.uint8)
        return Image.fromarray(small, "RGB").resize((side, side), Image.BICUBIC)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


# Noto Color Emoji (Debian's `fonts-noto-color-emoji`): flat, bright, filled pictures on a light
# canvas, the out-of-world images closest to this world's scenes. Its bitmaps exist at 109 px only.
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
_EMOJI_RANGES = ((0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF), (0x2600, 0x26FF))


def _glyph(ch: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """One emoji drawn in colour on a transparent canvas that holds the font's 109-px bitmaps."""
    image = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((0, 0), ch, font=font, embedded_color=True)
    return image


@cache
def _emoji_glyphs() -> tuple[tuple[str, ...], ImageFont.FreeTypeFont]:
    if not EMOJI_FONT.exists():
        raise FileNotFoundError(f"the emoji source needs {EMOJI_FONT}: apt-get install fonts-noto-color-emoji")
    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    missing = _glyph("\ue000", font).tobytes()  # a private-use code point: the font's empty glyph
    glyphs = tuple(ch for lo, hi in _EMOJI_RANGES for ch in map(chr, range(lo, hi + 1))
                   if _glyph(ch, font).tobytes() != missing)
    return glyphs, font


def _emoji(rng: random.Random) -> Image.Image:
    """1-4 emoji, each 15-45 % of the side, on a light canvas of 96-512 px."""
    glyphs, font = _emoji_glyphs()
    image = _canvas(rng)
    side = image.width
    for _ in range(rng.randint(1, 4)):
        glyph = _glyph(rng.choice(glyphs), font)
        glyph = glyph.crop(glyph.getbbox() or (0, 0, 1, 1))
        size = max(8, int(side * rng.uniform(0.15, 0.45)))
        glyph = glyph.resize((size, max(1, int(size * glyph.height / glyph.width))), Image.LANCZOS)
        image.paste(glyph, (rng.randint(0, side - glyph.width), rng.randint(0, max(0, side - glyph.height))), glyph)
    return image


SOURCES: dict[str, Callable[[random.Random], Image.Image]] = {
    "skimage": _photo_source("skimage"),
    "sklearn": _photo_source("sklearn"),
    "matplotlib": _photo_source("matplotlib"),
    "gradio": _photo_source("gradio"),
    "charts": _chart,
    "text": _text_page,
    "ui": _ui,
    "icons": _icon,
    "patterns": _pattern,
    "noise": _noise,
    "emoji": _emoji,
    "clipart": _clipart,
}
# Which sources train the image gate and which only measure it: whole sources held out.
TRAIN_SOURCES: tuple[str, ...] = ("skimage", "ui", "icons", "patterns", "noise", "clipart")
HELD_OUT_SOURCES: tuple[str, ...] = ("gradio", "sklearn", "matplotlib", "charts", "text")
# Added after the gate above was trained and its held-out misses had been read: measures it (and
# any gate after it) on pictures no one had looked at; kept out of the default held-out list so the
# v2 sets of every earlier seed are rebuilt as they were.
LATE_HELD_OUT_SOURCES: tuple[str, ...] = ("emoji",)


def out_of_world_image(source: str, rng: random.Random) -> Image.Image:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    return SOURCES[source](rng)


# --------------------------------------------------------------------------- questions

# Questions about what this world does not have, or not about the image. Two lists: DEV was
# looked at while the grammar was written; HELD_OUT only to measure it.
DEV_QUESTIONS: tuple[str, ...] = (
    "Is there a cat?", "hello", "Write a poem.", "What time is it?", "What does the sign say?",
    "How many people are there?", "What color is the car?", "Is it raining?", "Who is this?",
    "What is the weather like?", "What brand is this?", "Is the person happy?", "How many dogs are there?",
    "What animal is this?", "Read the text.", "Tell me a joke.", "What's your name?", "thanks!",
    "How many circels are there?", "Is there a hexagon?",
)
HELD_OUT_QUESTIONS: tuple[str, ...] = (
    "What breed is the dog?", "Is there a horse in the picture?", "How many birds can you see?",
    "What kind of animal is in the image?", "Is the cat sleeping?", "How old is the man?",
    "Is the woman smiling?", "How many people are in the photo?", "What is the child holding?",
    "What does the text say?", "What is written on the board?", "Translate the caption.",
    "What letter is shown?", "What kind of car is this?", "Is there a bus?", "How many bikes are there?",
    "What color is the truck?", "Is it sunny?", "Will it rain tomorrow?", "What season is it?",
    "What time does the clock show?", "What day is it today?", "What logo is this?", "Which company makes this?",
    "Is this a Nike shoe?", "How does this picture make you feel?", "Is the scene sad?", "Are they in love?",
    "Write a poem about this image.", "Write me a story.", "Hi there", "Good morning!", "Can you help me?",
    "What is the capital of France?", "What is 2 plus 2?", "Explain quantum physics.", "What food is on the plate?",
    "Is the coffee hot?", "What is the man wearing?", "Where was this photo taken?",
)


# --------------------------------------------------------------------------- files


def _write(out: Path, rows: list[tuple[Image.Image, list[tuple[str, str]]]]) -> None:
    """(image, [(question, question_type)]) rows -> the VQA v2 layout, every answer `unanswerable`."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    questions: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (image, asked) in enumerate(rows):
        image.save(out / "images" / f"{image_id}.png", compress_level=1)
        for j, (question, qtype) in enumerate(asked):
            question_id = image_id * 1000 + j
            questions.append({"image_id": image_id, "question_id": question_id, "question": question})
            annotations.append({"image_id": image_id, "question_id": question_id, "question_type": qtype,
                                "answer_type": "other", "multiple_choice_answer": UNANSWERABLE,
                                "answers": [{"answer": UNANSWERABLE, "answer_id": k} for k in range(1, 11)]})
    (out / "questions.json").write_text(json.dumps({"questions": questions}))
    (out / "annotations.json").write_text(json.dumps({"annotations": annotations}))


def write_out_of_world_images(out_dir: str | Path, sources: Sequence[str], n_images: int, seed: int,
                              questions_per_image: int = 2) -> None:
    """Images from `sources` (round-robin), each asked ShapesVQA questions (v1 and v2 families):
    the question fits the world, the image does not, so the answer is `unanswerable`."""
    rng = random.Random(seed)
    sampler = QuestionSampler(ALL_FAMILIES[: len(FAMILIES) + 1], round_robin=True)
    rows = []
    for i in range(n_images):
        source = sources[i % len(sources)]
        image = out_of_world_image(source, rng)
        scene = sample_scene(rng, 224)  # questions as a user of this world would ask them
        rows.append((image, [(q["question"], f"image:{source}") for q in sampler.questions(scene, rng, questions_per_image)]))
    _write(Path(out_dir), rows)


def write_out_of_world_questions(out_dir: str | Path, questions: Sequence[str], n_images: int, seed: int,
                                 questions_per_image: int = 2) -> None:
    """ShapesVQA scenes (in the world) asked questions about what the world does not have."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_images):
        side = rng.randint(96, 512)
        image = render_scene(sample_scene(rng, side), rng, side)
        rows.append((image, [(q, "question") for q in rng.sample(list(questions), questions_per_image)]))
    _write(Path(out_dir), rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmchat out-of-world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--questions-per-image", type=int, default=2)
    parser.add_argument("--sources", nargs="*", default=list(HELD_OUT_SOURCES), help=f"from {', '.join(SOURCES)}")
    parser.add_argument("--questions", choices=("dev", "held-out"),
                        help="instead of out-of-world images: in-world scenes asked these out-of-world questions")
    args = parser.parse_args(argv)
    if args.questions:
        chosen = DEV_QUESTIONS if args.questions == "dev" else HELD_OUT_QUESTIONS
        write_out_of_world_questions(args.out, chosen, args.images, args.seed, args.questions_per_image)
    else:
        unknown = set(args.sources) - set(SOURCES)
        if unknown:
            parser.error(f"unknown sources {sorted(unknown)}; choose from {', '.join(SOURCES)}")
        write_out_of_world_images(args.out, args.sources, args.images, args.seed, args.questions_per_image)
    print(f"wrote {args.images} images to {args.out}")


if __name__ == "__main__":
    main()
