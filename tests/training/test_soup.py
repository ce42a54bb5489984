"""A model soup: the mean of fine-tunes' weights, saved as a checkpoint that loads and answers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmchat.serving.engine import ChatEngine
from mmchat.training.factory import build_tiny
from mmchat.training.soup import main


def saved(seed: int, folder) -> str:
    model, processor = build_tiny(seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_a_soup_is_the_mean_of_the_weights_and_answers(tmp_path, shapes_image):
    a, b = saved(0, tmp_path / "a"), saved(1, tmp_path / "b")
    assert main(["--out", str(tmp_path / "soup"), a, b]) == 0
    wa, wb, soup = (load_file(f"{f}/model.safetensors") for f in (a, b, tmp_path / "soup"))
    name = next(k for k in wa if wa[k].is_floating_point() and not torch.equal(wa[k], wb[k]))
    torch.testing.assert_close(soup[name], (wa[name] + wb[name]) / 2)
    engine = ChatEngine.from_pretrained(str(tmp_path / "soup"), device="cpu", dtype="float32")
    assert isinstance(engine.answer(shapes_image, "What color is the square?"), str)
    engine.close()


def test_checkpoints_of_different_models_are_refused(tmp_path):
    a = saved(0, tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    weights = load_file(f"{a}/model.safetensors")
    weights.pop(next(iter(weights)))
    save_file(weights, b / "model.safetensors")
    with pytest.raises(ValueError, match="does not hold the same tensors"):
        main(["--out", str(tmp_path / "soup"), a, str(b)])
