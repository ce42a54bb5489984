"""The chat engine: streaming, multi-turn history, stopping, and errors a user can read."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from PIL import Image

from mmchat.serving.engine import ChatEngine, ChatInputError, GenerationSettings
from mmchat.serving.families import Turn
from mmchat.serving.images import ImageInputError, load_image


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


def test_a_conversations_image_is_read_once_for_its_turns_and_heat_maps(tiny_checkpoint, shapes_image, tmp_path, monkeypatch):
    """Each turn and each heat-map brings the picture again; it is decoded and hashed once per
    source (a PIL image object, or a file as it is), and read again when the file changes."""
    from mmchat.serving import engine as engine_module

    engine = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu")
    reads = []

    def counted(source, *args, **kwargs):
        reads.append(source)
        return load_image(source, *args, **kwargs)

    monkeypatch.setattr(engine_module, "load_image", counted)
    settings = GenerationSettings(max_new_tokens=4)
    q1, q2 = "What color is the square?", "How many objects are there?"
    first = engine.answer(shapes_image, q1, [], settings)
    assert engine.attention_overlay(shapes_image, q1, first) is not None
    engine.answer(shapes_image, q2, [Turn(q1, first)], settings)
    assert len(reads) == 1
    engine.answer(shapes_image.copy(), q1, [], settings)  # another object: read, though the same picture
    assert len(reads) == 2

    path = tmp_path / "scene.png"
    shapes_image.save(path)
    on_disk = engine.answer(str(path), q1, [], settings)
    engine.attention_overlay(str(path), q1, on_disk)
    assert len(reads) == 3
    key = engine._read(str(path))[1]
    Image.new("RGB", (64, 64), "green").save(path)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later change, whatever the clock's grain
    engine.answer(str(path), q1, [], settings)
    assert len(reads) == 4 and engine._read(str(path))[1] != key
    engine.close()


def test_on_a_cpu_image_keys_and_values_stay_in_fp32(tiny_checkpoint, shapes_image):
    """A bf16 model on a CPU attends to the image in fp32: one row's attention with its weights (the
    heat-map's) cost 63 µs a layer in bf16 against 19 µs in fp32 there."""
    engine = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16")
    answer = engine.answer(shapes_image, "What color is the square?", [], GenerationSettings(max_new_tokens=4))
    state = engine.scheduler.images.get(engine._read(shapes_image)[1])
    assert engine.adapter.model.dtype == torch.bfloat16
    assert {t.dtype for kv in state.key_values.values() for t in kv} == {torch.float32}
    weights = engine.answer_attention(shapes_image, "What color is the square?", answer)
    torch.testing.assert_close(weights.float().sum(-1), torch.ones(len(weights)), atol=2e-2, rtol=0)
    engine.close()


def test_a_bf16_model_on_a_cpu_runs_small_forwards_on_an_fp32_copy(tiny_checkpoint, shapes_image):
    """A few rows' decode steps run on an fp32 copy of a bf16 model's weights (a bf16 linear cost
    about 70 µs however small there, an fp32 one 25 µs for one row); wider forwards run in bf16, and
    a conversation's keys/values pass from one copy to the other between its turns."""
    engine = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16")
    assert engine.adapter.small_model.dtype == torch.float32
    settings = GenerationSettings(max_new_tokens=4)
    q1, q2 = "What color is the square?", "Is there a red circle? Is there a blue square? How many objects are there?"
    a1 = engine.answer(shapes_image, q1, [], settings)
    key = engine._read(shapes_image)[1]
    cached = engine.scheduler.prefixes.longest(key, engine.adapter.prompt_ids(q2, [Turn(q1, a1)]))[1]
    assert {t.dtype for kv in cached for t in kv} == {torch.float32}  # its last step ran on the copy
    a2 = engine.answer(shapes_image, q2, [Turn(q1, a1)], settings)  # a prefill too wide for the copy
    engine.adapter.small_model = None  # the same questions, every forward in bf16
    engine.release(shapes_image)
    b1 = engine.answer(shapes_image, q1, [], settings)
    assert (b1, engine.answer(shapes_image, q2, [Turn(q1, b1)], settings)) == (a1, a2)
    engine.close()
