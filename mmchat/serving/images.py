"""Checking what a user uploads: any file a browser may send in, an RGB PIL image or a clear error.

`load_image` applies EXIF orientation, makes any mode 8-bit RGB and refuses bombs and broken files
with an `ImageInputError` whose message can be shown to the user as it is.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..modeling.processing_mmchat import to_rgb

# 40 megapixels: far above any photo's useful detail for a 224-px model, far below a bomb.
MAX_IMAGE_PIXELS = 40_000_000


class ImageInputError(ValueError):
    """An uploaded file that cannot be used as an image; the message is meant for the user."""


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open, check and normalise an image: EXIF orientation applied, any mode made 8-bit RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                image = source
            else:
                image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageInputError(
                    f"The image is too large ({width}×{height} = {width * height / 1e6:.0f} megapixels); "
                    f"please upload one under {max_pixels / 1e6:.0f} megapixels."
                )
            image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageInputError("The image is too large to open safely (decompression bomb refused).") from e
    except UnidentifiedImageError as e:
        raise ImageInputError("That file is not an image I can read; please upload a PNG, JPEG, GIF or WebP.") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageInputError("The image file is corrupt or truncated; please upload it again.") from e
    if width == 0 or height == 0:
        raise ImageInputError("The image is empty (zero width or height).")
    return to_rgb(ImageOps.exif_transpose(image))
