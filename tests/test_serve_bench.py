"""The serving benchmark's baseline (today's path before the engine) still runs as the app ran it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mmchat.serving.engine import ChatEngine, ChatInputError
from mmchat.serving.loading import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serve_bench  # noqa: E402


def test_the_baseline_checks_inputs_and_answers_as_the_engine_does(tiny_checkpoint, shapes_image):
    adapter = load_model(tiny_checkpoint, device="cpu", dtype="float32")
    legacy = serve_bench.LegacyEngine(adapter)
    with pytest.raises(ChatInputError, match="upload an image"):
        legacy.check(None, "What color is the square?")
    with pytest.raises(ChatInputError):
        legacy.check(shapes_image, "???")
    image, question = legacy.check(shapes_image, "What color is the square?")
    engine = ChatEngine(adapter)
    settings = serve_bench.SETTINGS
    assert legacy.answer(image, question, [], settings) == engine.answer(image, question, [], settings)
    assert legacy.attention_overlay(image, question, engine.answer(image, question, [], settings)) is not None
    engine.close()
