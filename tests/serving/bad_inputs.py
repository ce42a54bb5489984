"""A corpus of hostile and odd uploads, questions and settings, generated (no binary files in git).

Each case says what the app must reply: `ANSWER` (the model's answer, which the tests compare with
the in-process engine's for the same bytes), or a fragment of the exact message. `note` is a
fragment of the note that must follow the answer. The expected texts are written out here, not
imported from the code, so that a changed message fails the tests.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pillow_heif
from PIL import Image, PngImagePlugin

pillow_heif.register_heif_opener()

ANSWER = "answer"
QUESTION = "What color is the square?"
FIRST_FRAME = "I answered about its first frame"


@dataclass(frozen=True)
class Upload:
    name: str
    filename: str
    data: bytes
    expect: str  # ANSWER or a fragment of the message
    note: str | None = None


def scene(side: int = 64) -> Image.Image:
    """A red square and a blue disc on grey, like the tests' shapes image."""
    a = np.full((side, side, 3), 200, np.uint8)
    s = side // 8
    a[s : 3 * s, s : 3 * s] = (220, 40, 40)
    yy, xx = np.mgrid[:side, :side]
    a[(yy - 5.5 * s) ** 2 + (xx - 5.5 * s) ** 2 < (1.6 * s) ** 2] = (40, 80, 220)
    return Image.fromarray(a)


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _with_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(scene(), "JPEG", exif=exif, quality=95)


def _jpeg_with_random_data() -> bytes:
    """A JPEG whose entropy-coded data is random bytes after a whole header, ending in EOI.

    Pillow decodes it without a word (libjpeg's warnings are silenced); seed 1 is one such case.
    """
    data = encode(scene(256), "JPEG", quality=90)
    start = data.find(b"\xff\xda") + 14
    noise = np.random.default_rng(1).integers(0, 256, len(data) - start - 2, dtype=np.uint8).tobytes()
    return data[:start] + noise + data[-2:]


def _png_with_bad_crc() -> bytes:
    data = bytearray(encode(scene(), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 20] ^= 0xFF  # one flipped byte in the pixel data
    return bytes(data)


def _text_bomb() -> bytes:
    """Valid pixels, plus a zTXt chunk that unpacks from ~50 kB to 50 MB."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 50_000_000, zip=True)
    return encode(scene(), "PNG", pnginfo=info)


def _animated(fmt: str) -> bytes:
    frames = [scene(), scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_transparent() -> bytes:
    image = scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    image.info["transparency"] = 0
    return encode(image, "PNG")


def _svg() -> bytes:
    return b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">' \
        b'<rect x="8" y="8" width="16" height="16" fill="red"/></svg>'


def uploads() -> list[Upload]:
    """Every upload case; the images are 64 px scenes unless the case is about size."""
    grey = np.asarray(scene().convert("L"))
    semi = scene().convert("RGBA")
    semi.putalpha(128)
    png = encode(scene(), "PNG")
    jpeg = encode(scene(), "JPEG", quality=95)
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    cases = [
        Upload("zero-byte", "empty.png", b"", "The file is empty (0 bytes)"),
        Upload("text as PNG", "notes.png", b"This is a plain text file, not a picture.\n" * 20,
               "That file is text, not an image"),
        Upload("SVG", "drawing.svg", _svg(), "That file is an SVG drawing, not an image"),
        Upload("PDF named .png", "document.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
               "That file is a PDF document, not an image"),
        Upload("HTML named .png", "page.png", b"<!DOCTYPE html><html><body>hi</body></html>",
               "That file is a web page, not an image"),
        Upload("random bytes", "noise.png", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
               "That file is not an image I can read"),
        Upload("truncated PNG", "cut.png", png[: len(png) // 2], "corrupt or truncated"),
        Upload("truncated JPEG", "cut.jpg", jpeg[: len(jpeg) // 2], "corrupt or truncated"),
        Upload("JPEG with random data", "noisy.jpg", _jpeg_with_random_data(), "corrupt or truncated"),
        Upload("PNG with a bad CRC", "crc.png", _png_with_bad_crc(), "corrupt or truncated"),
        Upload("decompression bomb", "bomb.png", bomb, "too large to open safely"),
        Upload("45 megapixels", "huge.png", encode(Image.new("1", (7500, 6000)), "PNG"),
               "too large (7500×6000 = 45 megapixels)"),
        Upload("PNG text bomb", "metadata.png", _text_bomb(), "metadata (a compressed text chunk) is far too large"),
        Upload("1x1", "dot.png", encode(Image.new("RGB", (1, 1), (0, 0, 255)), "PNG"),
               "too small to read (1×1 pixels)"),
        Upload("2000x8", "strip.png", encode(Image.new("RGB", (2000, 8)), "PNG"), "too small to read (2000×8 pixels)"),
        Upload("fully transparent", "clear.png", encode(Image.new("RGBA", (64, 64), (255, 0, 0, 0)), "PNG"),
               "fully transparent"),
        Upload("PNG", "scene.png", png, ANSWER),
        Upload("JPEG", "scene.jpg", jpeg, ANSWER),
        Upload("WebP", "scene.webp", encode(scene(), "WEBP", lossless=True), ANSWER),
        Upload("BMP", "scene.bmp", encode(scene(), "BMP"), ANSWER),
        Upload("GIF", "scene.gif", encode(scene(), "GIF"), ANSWER),
        Upload("TIFF", "scene.tiff", encode(scene(), "TIFF"), ANSWER),
        Upload("HEIC", "scene.heic", encode(scene(), "HEIF", quality=95), ANSWER),
        Upload("AVIF", "scene.avif", encode(scene(), "AVIF", quality=95), ANSWER),
        Upload("16-bit grey PNG", "grey16.png", encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), ANSWER),
        Upload("16-bit big-endian TIFF", "grey16b.tiff",
               encode(Image.fromarray(grey.astype(">u2") * 257, mode="I;16B"), "TIFF"), ANSWER),
        Upload("float TIFF", "float.tiff", encode(Image.fromarray(grey.astype(np.float32) / 255.0), "TIFF"), ANSWER),
        Upload("CMYK JPEG", "cmyk.jpg", encode(scene().convert("CMYK"), "JPEG", quality=95), ANSWER),
        Upload("CMYK TIFF", "cmyk.tiff", encode(scene().convert("CMYK"), "TIFF"), ANSWER),
        Upload("palette with transparency", "palette.png", _palette_transparent(), ANSWER),
        Upload("LA", "la.png", encode(scene().convert("LA"), "PNG"), ANSWER),
        Upload("1-bit", "bits.png", encode(scene().convert("1"), "PNG"), ANSWER),
        Upload("half-transparent RGBA", "semi.png", encode(semi, "PNG"), ANSWER),
        Upload("animated GIF", "anim.gif", _animated("GIF"), ANSWER, FIRST_FRAME),
        Upload("animated WebP", "anim.webp", _animated("WEBP"), ANSWER, FIRST_FRAME),
        Upload("APNG", "anim.png", _animated("PNG"), ANSWER, FIRST_FRAME),
        Upload("path-like name", "../../etc/passwd.png", png, ANSWER),
        Upload("odd name", "a b;$(rm -rf ~) 名前 ‮gnp.exe.png", png, ANSWER),
        Upload("upper-case extension", "SCENE.PNG", png, ANSWER),
    ]
    cases += [Upload(f"EXIF orientation {o}", f"exif{o}.jpg", _with_exif(o), ANSWER) for o in range(1, 9)]
    return cases


# (name, question, expected reply): asked about the PNG scene with the default settings.
QUESTIONS: list[tuple[str, Any, str]] = [
    ("empty", "", "Please type a question about the image."),
    ("whitespace", " \t\n  ", "Please type a question about the image."),
    ("a million characters", "x" * 10**6, "That question is 1000000 characters long; please keep it under 1000."),
    ("emoji only", "🔴🟦❓👀", "That question has no letters; please ask it in words"),
    ("punctuation only", "???", "That question has no letters; please ask it in words"),
    ("digits only", "1 2 3", "That question has no letters; please ask it in words"),
    ("control characters only", "\x00\x07\x1b", "That question holds only control characters; please type it in words."),
    ("right-to-left", "ما لون المربع؟", ANSWER),
    ("emoji and words", "What color is the 🟥 square?", ANSWER),
    ("control characters inside", "What\x00 color\x07 is the\x1b square?", ANSWER),
    ("HTML", "<img src=x onerror=alert(1)><script>alert(2)</script> What color is the <b>square</b>?", ANSWER),
    ("lone surrogate", "What color is the square\ud800?", ANSWER),
]

# (name, (max_new_tokens, do_sample, temperature), expected reply)
SETTINGS: list[tuple[str, tuple[Any, Any, Any], str]] = [
    ("tokens 0", (0, False, 0.7), "Max new tokens must be between 1 and 256, not 0."),
    ("tokens negative", (-5, False, 0.7), "Max new tokens must be between 1 and 256, not -5."),
    ("tokens huge", (10**9, False, 0.7), "Max new tokens must be between 1 and 256, not 1000000000."),
    ("tokens NaN", (math.nan, False, 0.7), "Max new tokens must be a finite number, not nan."),
    ("tokens infinite", (math.inf, False, 0.7), "Max new tokens must be a finite number, not inf."),
    ("tokens null", (None, False, 0.7), "Max new tokens is empty; please set it (a number)."),
    ("tokens text", ("many", False, 0.7), "Max new tokens must be a number, not the text 'many'."),
    ("tokens fraction", (2.5, False, 0.7), "Max new tokens must be a whole number, not 2.5."),
    ("tokens boolean", (True, False, 0.7), "Max new tokens must be a number, not True."),
    ("tokens as numeric text", ("6", False, 0.7), ANSWER),
    ("temperature NaN, sampling", (8, True, math.nan), "Temperature must be a finite number, not nan."),
    ("temperature NaN, greedy", (8, False, math.nan), "Temperature must be a finite number, not nan."),
    ("temperature 0, sampling", (8, True, 0), "Temperature must be above 0 and at most 2 when sampling, not 0"),
    ("temperature negative, sampling", (8, True, -1), "Temperature must be above 0 and at most 2 when sampling, not -1"),
    ("temperature huge, sampling", (8, True, 1e9), "Temperature must be above 0 and at most 2 when sampling, not 1e+09"),
    ("temperature null", (8, False, None), "Temperature is empty; please set it (a number)."),
    ("temperature text", (8, True, "hot"), "Temperature must be a number, not the text 'hot'."),
    ("temperature 0, greedy", (8, False, 0), ANSWER),
    ("sample null", (8, None, 0.7), "Sample must be true or false, not None."),
    ("sample text", (8, "maybe", 0.7), "Sample must be true or false, not 'maybe'."),
]
