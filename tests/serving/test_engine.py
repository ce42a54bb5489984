"""The chat engine: streaming, multi-turn history, stopping, and errors a user can read."""

from __future__ import annotations

import threading

import pytest

from mmchat.serving.engine import ChatEngine, ChatInputError, GenerationSettings
from mmchat.serving.families import Turn
from mmchat.serving.images import ImageInputError


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> ChatEngine:
    return ChatEngine.from_pretrained(tiny_checkpoint, device="cpu")


def test_stream_grows_to_the_full_answer(engine, shapes_image):
    settings = GenerationSettings(max_new_tokens=12)
    chunks = list(engine.stream(shapes_image, "What color is the square?", [], settings))
    assert len(chunks) >= 2
    for shorter, longer in zip(chunks, chunks[1:]):
        assert longer.startswith(shorter)
    assert chunks[-1] == engine.answer(shapes_image, "What color is the square?", [], settings)
    assert chunks[-1]


def test_history_reaches_the_model(engine, shapes_image):
    question = "What color is the square?"
    alone = engine.adapter.inputs(shapes_image, question, [])
    after = engine.adapter.inputs(shapes_image, question, [Turn("How many objects are there?", "2")])
    assert after["input_ids"].shape[1] > alone["input_ids"].shape[1]
    text = engine.adapter.tokenizer.decode(after["input_ids"][0], skip_special_tokens=True)
    assert text == "how many objects are there?2what color is the square?"


def test_long_history_is_trimmed_oldest_first(engine, shapes_image):
    limit = engine.adapter.max_context_tokens()
    history = [Turn(f"question number {i} about the picture?", "yes") for i in range(200)]
    inputs = engine._fit_history(shapes_image, "What now?", history)
    assert inputs["input_ids"].shape[1] < limit
    text = engine.adapter.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert "question number 199" in text and "question number 0 " not in text


def test_stop_event_ends_generation_early(engine, shapes_image):
    stop = threading.Event()
    settings = GenerationSettings(max_new_tokens=200)
    seen = []
    for text in engine.stream(shapes_image, "Describe it", [], settings, stop_event=stop):
        seen.append(text)
        stop.set()
    full = engine.answer(shapes_image, "Describe it", [], settings)
    assert len(seen) == 1 and len(seen[0]) < len(full)


def test_sampling_settings_are_checked():
    with pytest.raises(ChatInputError, match="Temperature must be above 0"):
        GenerationSettings(do_sample=True, temperature=0).generate_kwargs()
    assert GenerationSettings(do_sample=True, temperature=0.5).generate_kwargs()["temperature"] == 0.5


@pytest.mark.parametrize(
    "image, question, error, message",
    [
        (None, "What color?", ChatInputError, "upload an image"),
        ("IMAGE", "   ", ChatInputError, "type a question"),
        ("IMAGE", "x" * 1001, ChatInputError, "under 1000"),
        (b"not an image", "What color?", ImageInputError, "not an image"),
    ],
)
def test_bad_input_gets_a_readable_error(engine, shapes_image, image, question, error, message):
    image = shapes_image if image == "IMAGE" else image
    with pytest.raises(error, match=message):
        list(engine.stream(image, question))


def test_attention_overlay_is_the_image_with_a_heat_map(engine, shapes_image):
    answer = engine.answer(shapes_image, "What color is the square?")
    overlay = engine.attention_overlay(shapes_image, "What color is the square?", answer)
    assert overlay.size == shapes_image.size and overlay.mode == "RGB"
    assert overlay.tobytes() != shapes_image.tobytes()


def test_batched_answers_match_single_answers(engine, shapes_image):
    questions = ["What color is the square?", "How many objects are there?"]
    batch = engine.answer_batch([shapes_image, shapes_image], questions, GenerationSettings(max_new_tokens=6))
    single = [engine.answer(shapes_image, q, [], GenerationSettings(max_new_tokens=6)) for q in questions]
    assert batch == single
