"""MMChatProcessor: the image processor, the tokenizer and the chat template of a checkpoint.

It travels with the weights (`trust_remote_code`), so it reads images that are already open;
checking what a user uploads is the server's job (`mmchat.serving.images`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from transformers import BatchFeature, ProcessorMixin
from transformers.image_utils import load_image

# The bilinear resize reduces an image through a triangle filter one output pixel wide on each side,
# which softens its edges by this sigma (in output pixels); see `MMChatProcessor.soften`.
BILINEAR_ANTIALIAS_SIGMA = 6**-0.5

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


def one_image_each(images: Image.Image | str | list[Any]) -> list[Image.Image]:
    """A flat list with one image per conversation, from an image, a list, or a list of lists.

    Chat messages may name an image by path, URL or base64 (`{"type": "image", "url": ...}`);
    transformers' `load_image` opens those.
    """
    if isinstance(images, Image.Image | str):
        images = [images]
    flat = []
    for item in images:
        if isinstance(item, list | tuple):
            if len(item) != 1:
                raise ValueError(
                    f"mmchat models read one image per conversation; got {len(item)}. "
                    "Start a new conversation for another image."
                )
            item = item[0]
        flat.append(load_image(item) if isinstance(item, str) else item)
    return flat


class MMChatProcessor(ProcessorMixin):
    """Image processor + tokenizer + chat template, saved and loaded with the checkpoint."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        antialias_sigma: float = 0.0,
    ):
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
        self.antialias_sigma = antialias_sigma

    def __call__(
        self,
        images: Image.Image | list[Image.Image] | list[list[Image.Image]] | None = None,
        text: str | list[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokens for `text` (left-padded) and pixels for `images`, one image per text.

        `images` may also be one list per conversation, as `apply_chat_template(..., tokenize=True)`
        and the image-text-to-text pipeline give them; each must hold exactly one image.
        """
        if videos is not None or audio is not None:
            raise ValueError("mmchat models read images and text only, not videos or audio.")
        data: dict[str, Any] = {}
        if text is not None:
            data.update(self.tokenizer(text, return_tensors=return_tensors, **{"padding": True, **kwargs}))
        if images is not None:
            data.update(self.pixel_values(images, return_tensors))
        return BatchFeature(data=data)

    def pixel_values(self, images: Any, return_tensors: str = "pt") -> BatchFeature:
        """`pixel_values` for one image per conversation, as training and serving both read them."""
        images = [self.soften(to_rgb(image)) for image in one_image_each(images)]
        return self.image_processor(images, return_tensors=return_tensors)

    def soften(self, image: Image.Image) -> Image.Image:
        """Blur each axis the resize leaves at its own length by `antialias_sigma` px.

        Reducing a larger image softens its edges (`BILINEAR_ANTIALIAS_SIGMA`) on top of whatever
        anti-aliasing its renderer did, so a model trained on scenes drawn at 97-512 px saw edges
        that soft; a scene drawn at exactly the model's side would reach it with its renderer's
        anti-aliasing alone (at most one partly covered pixel). The shipped model undercounted
        those: 96.56 % of 1,800 count questions of the independent renderer at 96 px, 98.33 %
        softened (see its card). An upsampled image is softened by its interpolation and left alone."""
        size = getattr(self.image_processor, "size", None) or {}
        if not self.antialias_sigma or "width" not in size:
            return image
        sx = self.antialias_sigma if image.width == size["width"] else 0.0
        sy = self.antialias_sigma if image.height == size["height"] else 0.0
        return image.filter(ImageFilter.GaussianBlur((sx, sy))) if sx or sy else image

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """The text the model continues: the conversation so far, then the assistant's turn."""
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
