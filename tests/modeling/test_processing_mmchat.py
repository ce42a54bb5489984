"""The processor's pixels: a scene drawn at exactly the model's side reaches it as softened as larger ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import ViTImageProcessorPil

from mmchat.modeling.processing_mmchat import BILINEAR_ANTIALIAS_SIGMA, MMChatProcessor
from mmchat.serving.loading import DEFAULT_MODEL
from mmchat.training.factory import TINY_CORPUS, build_processor


def hard_edged_scene(side: int) -> Image.Image:
    """A black square on white, its edges on pixel boundaries: how a renderer without anti-aliasing draws."""
    pixels = np.full((side, side, 3), 255, np.uint8)
    pixels[side // 4 : side // 2, side // 4 : side // 2] = 0
    return Image.fromarray(pixels)


@pytest.fixture
def processor() -> MMChatProcessor:
    return build_processor(96, TINY_CORPUS, vocab_size=300)


def edge_row(processor: MMChatProcessor, image: Image.Image) -> np.ndarray:
    return processor.pixel_values(image)["pixel_values"][0, 0, 36].numpy()


def test_a_scene_at_the_models_side_is_softened_like_a_reduced_one(processor):
    native = edge_row(processor, hard_edged_scene(96))
    plain = processor.image_processor([hard_edged_scene(96)], return_tensors="pt")["pixel_values"][0, 0, 36].numpy()
    assert len(np.unique(plain)) == 2, "without softening the edge is a step"
    # Softened: the step spreads over the neighbouring pixels, as reducing a 480 px drawing spreads it.
    reduced = edge_row(processor, hard_edged_scene(480))
    grey = lambda row: int(((row > row.min() + 0.05) & (row < row.max() - 0.05)).sum())  # noqa: E731
    assert grey(native) == grey(reduced) == 4  # two edges, two grey pixels each


def test_reduced_and_upsampled_images_are_left_as_the_resize_makes_them(processor):
    for side in (64, 224):  # easy-vqa's 64 px are upsampled; 224 px scenes reduced
        image = hard_edged_scene(side)
        plain = processor.image_processor([image], return_tensors="pt")["pixel_values"]
        assert np.array_equal(processor.pixel_values(image)["pixel_values"].numpy(), plain.numpy())


def test_the_setting_travels_with_the_checkpoint(processor, tmp_path):
    assert processor.antialias_sigma == pytest.approx(6**-0.5)
    processor.save_pretrained(tmp_path)
    assert MMChatProcessor.from_pretrained(tmp_path).antialias_sigma == pytest.approx(BILINEAR_ANTIALIAS_SIGMA)
    # A processor saved before the setting existed loads with it off, as it was trained.
    old = MMChatProcessor(ViTImageProcessorPil(size={"height": 96, "width": 96}), processor.tokenizer)
    assert old.antialias_sigma == 0.0 and np.unique(edge_row(old, hard_edged_scene(96))).size == 2


def test_the_shipped_model_softens_its_native_side():
    assert MMChatProcessor.from_pretrained(DEFAULT_MODEL).antialias_sigma == pytest.approx(BILINEAR_ANTIALIAS_SIGMA)
