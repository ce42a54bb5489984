"""Image handling: every upload a browser may send becomes RGB, or a message a user can read."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmchat.modeling import MMChatProcessor
from mmchat.serving.images import ImageInputError, load_image


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    # A 40x20 landscape image tagged "rotate 90° CW" (orientation 6) is shown as 20x40 portrait.
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(png_bytes(image, "JPEG", exif=exif, quality=95))
    assert loaded.size == (20, 40)
    r, g, b = loaded.getpixel((10, 2))  # the blue edge is now at the top
    assert b > 200 and r < 60


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), (255, 255, 255)),  # fully transparent -> white
        (Image.new("RGBA", (8, 8), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("LA", (8, 8), (0, 255)), (0, 0, 0)),
        (Image.new("L", (8, 8), 128), (128, 128, 128)),
        (Image.new("1", (8, 8), 1), (255, 255, 255)),
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
    ],
)
def test_any_mode_becomes_rgb(image, expected):
    loaded = load_image(png_bytes(image, "TIFF" if image.mode == "CMYK" else "PNG"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((4, 4)) == pytest.approx(expected, abs=2)


def test_palette_with_transparency():
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    loaded = load_image(png_bytes(image))
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_rescaled_not_clipped():
    a = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    loaded = load_image(png_bytes(Image.fromarray(a)))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == pytest.approx((128, 128, 128), abs=1)


def test_not_an_image():
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(b"%PDF-1.4 this is a pdf")


def test_truncated_image():
    data = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageInputError, match="corrupt"):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_refused_without_decoding():
    # A 20000x20000 PNG header compresses to a few hundred kB: refused from its header.
    data = png_bytes(Image.new("1", (20000, 20000)))
    with pytest.raises(ImageInputError, match="too large"):
        load_image(data)


def test_processor_batches_text_and_images(tiny_checkpoint):
    processor = MMChatProcessor.from_pretrained(tiny_checkpoint)
    prompt = processor.prompt([
        {"role": "user", "content": "How many?"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "What color?"},
    ])
    assert prompt == "<|user|>How many?<|end|><|assistant|>3<|end|><|user|>What color?<|end|><|assistant|>"
    batch = processor(images=[Image.new("RGBA", (50, 30))] * 2, text=[prompt, "hi"])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape[0] == 2
    assert batch["attention_mask"][1, 0] == 0  # left padding: generation continues every row
    decoded = processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert decoded == "how many?3what color?"  # the tokenizer lower-cases
