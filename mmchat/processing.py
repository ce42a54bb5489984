"""Turning what a user gives (an image file, a chat) into model inputs.

`load_image` accepts any file a browser may upload and gives an RGB PIL image or an
`ImageInputError` whose message can be shown to the user as it is.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature, ProcessorMixin

# 40 megapixels: far above any photo's useful detail for a 224-px model, far below a bomb.
MAX_IMAGE_PIXELS = 40_000_000

# One image per conversation: every text token attends over it by cross-attention, so the
# template needs no image placeholder. Turns end with <|end|>, the EOS token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join(' ') %}{% endif %}"
    "<|{{ message['role'] }}|>{{ text }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparent pixels become white, 16-bit and float are rescaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if image.mode.startswith("I;16") else (float(a.min()), float(a.max()))
        a = np.clip((a - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255)
        image = Image.fromarray(a.round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


class MMChatProcessor(ProcessorMixin):
    """Image processor + tokenizer + chat template, saved and loaded with the checkpoint."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None):
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    def __call__(
        self,
        images: Image.Image | list[Image.Image] | None = None,
        text: str | list[str] | None = None,
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        data: dict[str, Any] = {}
        if text is not None:
            data.update(self.tokenizer(text, return_tensors=return_tensors, padding=True, **kwargs))
        if images is not None:
            images = [images] if isinstance(images, Image.Image) else list(images)
            images = [to_rgb(image) for image in images]
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchFeature(data=data)

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """The text the model continues: the conversation so far, then the assistant's turn."""
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
