"""Image handling: every upload a browser may send becomes RGB, or a message a user can read."""

from __future__ import annotations

import io

import numpy as np
import pytest
from bad_inputs import ANSWER, Upload, scene, uploads  # tests/serving is on pytest's sys.path
from PIL import Image

from mmchat.modeling import MMChatProcessor
from mmchat.serving.images import MAX_SIDE, NOTES, ImageInputError, load_image


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
        (Image.new("RGBA", (32, 32), (255, 0, 0, 128)), (255, 128, 128)),  # half transparent over white
        (Image.new("RGBA", (32, 32), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("LA", (32, 32), (0, 255)), (0, 0, 0)),
        (Image.new("L", (32, 32), 128), (128, 128, 128)),
        (Image.new("1", (32, 32), 1), (255, 255, 255)),
        (Image.new("CMYK", (32, 32), (0, 255, 255, 0)), (255, 0, 0)),
    ],
)
def test_any_mode_becomes_rgb(image, expected):
    loaded = load_image(png_bytes(image, "TIFF" if image.mode == "CMYK" else "PNG"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((4, 4)) == pytest.approx(expected, abs=2)


def test_palette_with_transparency():
    image = Image.new("P", (32, 32), 1)
    image.putpixel((0, 1), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    loaded = load_image(png_bytes(image))
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_rescaled_not_clipped():
    a = np.full((32, 32), 32768, dtype=np.uint16)  # mid-grey in 16 bits
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


# --------------------------------------------------------------------------- the bad-input corpus


@pytest.mark.parametrize("case", uploads(), ids=lambda c: c.name)
def test_every_upload_is_read_or_refused_with_its_own_message(case: Upload) -> None:
    if case.expect != ANSWER:
        with pytest.raises(ImageInputError) as refused:
            load_image(case.data)
        assert case.expect in str(refused.value)
        return
    image = load_image(case.data)
    assert image.mode == "RGB" and image.size == (64, 64)
    notes = image.info[NOTES]
    assert (case.note is None and notes == ()) or any(case.note in n for n in notes)


# EXIF orientation -> the transpose that shows the picture upright.
UPRIGHT = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_every_exif_orientation_is_applied(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    loaded = np.asarray(load_image(png_bytes(scene(), "JPEG", exif=exif, quality=95)), dtype=np.int16)
    step = UPRIGHT[orientation]
    expected = np.asarray(scene() if step is None else scene().transpose(step), dtype=np.int16)
    assert np.abs(loaded - expected).mean() < 3


def test_a_big_jpeg_is_decoded_small_and_upright() -> None:
    # 3000x2000 landscape, tagged "rotate 90° CW": comes back portrait, at most MAX_SIDE a side.
    exif = Image.Exif()
    exif[0x0112] = 6
    big = scene(256).resize((3000, 2000))
    loaded = load_image(png_bytes(big, "JPEG", exif=exif, quality=90))
    assert loaded.size == (round(2000 * MAX_SIDE / 3000), MAX_SIDE)
    r, g, b = loaded.getpixel((loaded.width - 150, 150))  # the red square, now at the top right
    assert r > 180 and g < 90 and b < 90


def test_a_big_png_and_a_big_16_bit_png_are_shrunk() -> None:
    assert load_image(png_bytes(scene(256).resize((4000, 1000)))).size == (MAX_SIDE, MAX_SIDE // 4)
    grey16 = Image.fromarray(np.full((1500, 3000), 65535, np.uint16))
    loaded = load_image(png_bytes(grey16))
    assert loaded.size == (MAX_SIDE, MAX_SIDE // 2) and loaded.getpixel((5, 5)) == (255, 255, 255)


def test_a_callers_image_is_not_changed() -> None:
    big = scene(256).resize((3000, 2000))
    assert load_image(big).size == (MAX_SIDE, round(2000 * MAX_SIDE / 3000))
    assert big.size == (3000, 2000)


def test_a_vanished_upload_asks_for_it_again(tmp_path) -> None:
    with pytest.raises(ImageInputError, match="no longer on the server.*please upload it again"):
        load_image(str(tmp_path / "gone.png"))


def test_a_file_is_read_once_and_each_caller_gets_its_own_copy(tmp_path) -> None:
    path = tmp_path / "scene.png"
    scene().save(path)
    first, second = load_image(str(path)), load_image(path)
    assert first is not second and first.tobytes() == second.tobytes()
    first.paste((0, 0, 0), (0, 0, 64, 64))
    assert load_image(str(path)).getpixel((0, 0)) == (200, 200, 200)
