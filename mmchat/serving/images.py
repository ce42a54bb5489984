"""Checking what a user uploads: any file a browser may send in, an RGB PIL image or a clear error.

`load_image` refuses what it cannot use with an `ImageInputError` whose message can be shown to
the user as it is: not an image (PDF, SVG, text), empty, missing, corrupt or partial (a JPEG whose
data decodes only with errors, a PNG whose chunks fail their checksums), a metadata bomb, more
than 40 megapixels, under 16 px a side, or fully transparent. What it accepts (PNG, JPEG, WebP,
GIF, BMP, TIFF, HEIC/HEIF, AVIF; any Pillow mode; animated files by their first frame) is shrunk
while it is decoded, so that the largest accepted upload costs a fraction of a second:

- a JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (`Image.draft`, via `thumbnail`);
- anything else is reduced right after decoding (`Image.reduce`, via `thumbnail`'s reducing gap),

to at most `MAX_SIDE` px a side, which is more than any served family reads. Then EXIF orientation
is applied and the image made 8-bit RGB. Results are cached by (path, size, mtime): the engine
checks an upload before answering and again for the attention picture.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import pillow_heif
import simplejpeg
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..modeling.processing_mmchat import to_rgb

pillow_heif.register_heif_opener()  # HEIC/HEIF, what phones upload; Pillow 12 reads AVIF itself

# 40 megapixels: far above any photo's useful detail for a 224-px model, far below a bomb.
MAX_IMAGE_PIXELS = 40_000_000
MIN_SIDE = 16  # below this, a 224-px model sees a few blurred pixels blown up
# Llama 3.2 Vision, the largest reader served, tiles an image into at most 2x2 tiles of 560 px.
MAX_SIDE = 1120
# Only formats with a safe, self-contained decoder: never EPS (Ghostscript) or anything that runs code.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "AVIF", "HEIF", "ICO", "PPM", "TGA")
# `load_image(...).info[NOTES]`: sentences about how the upload was read, for the answer's note.
NOTES = "mmchat_notes"
FIRST_FRAME_NOTE = "The image has several frames (animated or multi-page); I answered about its first frame."
_CACHE_SIZE = 16


class ImageInputError(ValueError):
    """An uploaded file that cannot be used as an image; the message is meant for the user."""


def _refuse_unreadable(data: bytes) -> ImageInputError:
    """The message for a file Pillow does not recognise, naming what it looks like."""
    head = data[:512].lstrip().lower()
    if not data:
        return ImageInputError("The file is empty (0 bytes); please upload the image again.")
    if head.startswith(b"%pdf"):
        kind = "a PDF document"
    elif b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in data[:4096].lower()):
        kind = "an SVG drawing"
    elif head.startswith((b"<!doctype html", b"<html")):
        kind = "a web page"
    elif all(32 <= b < 127 or b in b"\t\r\n" for b in data[:512]):
        kind = "text"
    else:
        kind = None
    what = f"That file is {kind}, not an image" if kind else "That file is not an image I can read"
    return ImageInputError(f"{what}; please upload a PNG, JPEG, WebP, GIF, HEIC or AVIF image.")


def _check_whole(image: Image.Image, data: bytes) -> None:
    """Refuse a JPEG or PNG whose data is damaged, even where Pillow would decode it without a word.

    Pillow silences libjpeg's "corrupt data" warnings and does not check the PNG data's CRCs while
    decoding; simplejpeg (libjpeg-turbo, strict) and `verify` (every chunk's CRC) do.
    """
    if image.format in ("JPEG", "MPO"):  # MPO: a camera JPEG with a preview or a second eye after it
        # A 1/8-scale grey decode still reads every entropy-coded byte, at a tenth of the cost.
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    elif image.format == "PNG":
        with Image.open(io.BytesIO(data), formats=["PNG"]) as again:
            again.verify()


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """Decode `image` (its first frame) at most `max_side` px a side, in a mode that resizes well.

    An image opened here is shrunk in place (`thumbnail`, which drafts JPEGs); the caller's own
    image is never changed.
    """
    opened_here = isinstance(image, ImageFile.ImageFile)
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif image.mode.startswith("I;16"):
        # Pillow cannot resize 16-bit modes: 32-bit integers, scaled back to 8 bits after the shrink.
        image = image.convert("I")
        image.info["mmchat_16bit"] = True
    if max(image.size) > max_side and opened_here:
        # JPEG: draft (decode at 1/2..1/8 scale) for twice the target; others: reduce(), then resample.
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    elif max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    else:
        image.load()
    if image.info.get("mmchat_16bit"):
        image = image.point(lambda v: v * (1 / 257)).convert("L")
    return image


def _decode(data: bytes, source: Image.Image | None, max_pixels: int, max_side: int) -> Image.Image:
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = source if source is not None else Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise _refuse_unreadable(data) from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageInputError(
                f"The image is too large ({width}×{height} = {width * height / 1e6:.0f} megapixels); "
                f"please upload one under {max_pixels / 1e6:.0f} megapixels."
            )
        if min(width, height) < MIN_SIDE:
            raise ImageInputError(
                f"The image is too small to read ({width}×{height} pixels); please upload one at least "
                f"{MIN_SIDE} pixels on each side."
            )
        # MPO (a camera's JPEG with a preview or a second eye) is one picture, not an animation.
        if getattr(image, "is_animated", False) and image.format != "MPO":
            notes.append(FIRST_FRAME_NOTE)
        if source is None:
            _check_whole(image, data)
        exif = image.getexif()  # read before decoding: the shrunk copy need not carry it
        image = _shrink(image, max_side)
    if "A" in image.getbands() or "a" in image.getbands():
        alpha = image.getchannel("A" if "A" in image.getbands() else "a")
        if alpha.getextrema()[1] == 0:
            raise ImageInputError("The image is fully transparent, so there is nothing to see; please upload another.")
    if exif.get(0x0112, 1) != 1:
        image.info["exif"] = exif.tobytes()
        image = ImageOps.exif_transpose(image)
    image = to_rgb(image)
    image.info = {NOTES: tuple(notes)}  # nothing else of the file's metadata is used
    return image


def _read(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    if not os.path.exists(source):
        raise ImageInputError(
            "The image of this conversation is no longer on the server (uploads are deleted after a "
            "day and when the app restarts); please upload it again."
        )
    return Path(source).read_bytes()


_cache: OrderedDict[tuple, Image.Image] = OrderedDict()
_cache_lock = threading.Lock()


def load_image(
    source: str | Path | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS, max_side: int = MAX_SIDE
) -> Image.Image:
    """Open, check and normalise an image: first frame, at most `max_side` px, EXIF applied, 8-bit RGB.

    `.info[NOTES]` holds sentences about how it was read (e.g. only its first frame).
    """
    key = None
    if isinstance(source, str | Path) and os.path.exists(source):
        stat = os.stat(source)
        key = (str(source), stat.st_size, stat.st_mtime_ns, max_pixels, max_side)
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key].copy()
    try:
        if isinstance(source, Image.Image):
            image = _decode(b"", source, max_pixels, max_side)
        else:
            image = _decode(_read(source), None, max_pixels, max_side)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageInputError("The image is too large to open safely (decompression bomb refused).") from e
    except ValueError as e:
        # Pillow refuses PNG text (zTXt/iTXt) and ICC chunks that would unpack to more than a few MB.
        if "MAX_TEXT" in str(e) or "text chunks" in str(e):
            raise ImageInputError(
                "The image's metadata (a compressed text chunk) is far too large to read safely, though "
                "the picture itself may be fine; please save it again without metadata (or take a "
                "screenshot of it) and upload that."
            ) from e
        raise ImageInputError(f"The image file is corrupt or truncated ({e}); please upload it again.") from e
    except Exception as e:  # noqa: BLE001 (Pillow's decoders raise OSError, SyntaxError, EOFError, struct.error, ...)
        raise ImageInputError(f"The image file is corrupt or truncated ({e}); please upload it again.") from e
    if key is not None:
        with _cache_lock:
            _cache[key] = image
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        image = image.copy()
    return image
