"""The checkpoint that ships in models/: it loads, the app serves it, and it reads the image."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_app import serve_app
from gradio_client import Client, handle_file
from PIL import Image

from mmchat.data.out_of_world import out_of_world_image
from mmchat.data.shapes import write_dataset
from mmchat.data.vqa import load_vqa
from mmchat.evaluation.evaluate import predict
from mmchat.evaluation.vqa_metric import score_predictions
from mmchat.serving.engine import UNANSWERABLE, ChatEngine, GenerationSettings
from mmchat.serving.loading import DEFAULT_MODEL, load_model
from mmchat.serving.ui import BOUNDARY

ROOT = Path(__file__).resolve().parents[2]
# The model card: 99.5 % on its 1,500-question test split, blind 23.8 % (on these 140 questions:
# 99.3 % and 32.1 %). Room is left for this smaller sample, where one answer is 0.7 points; the
# shipped model must stay far above its own blind baseline.
MIN_ACCURACY = 92.0
MIN_GAIN_OVER_BLIND = 45.0


@pytest.fixture(scope="module")
def adapter():
    return load_model(DEFAULT_MODEL, device="cpu")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes-check")
    write_dataset(path, n_images=20, seed=777, questions_per_image=7)  # a seed no training run used
    return load_vqa(path)


def test_it_holds_on_scenes_from_an_independent_renderer(adapter, tmp_path):
    """benchmarks/independent_shapes.py was written from the spec alone by someone who never read
    mmchat/data/shapes.py: its own rasteriser, triangle shapes, noise over the objects too, and its
    own question sampler. The model must answer its scenes as well as its own renderer's (on these
    120 questions 98.3 % for the model shipped before; the card gives 1,500 at 224 and at 96 px)."""
    command = [sys.executable, str(ROOT / "benchmarks" / "independent_shapes.py"), "--out", str(tmp_path)]
    subprocess.run([*command, "--images", "40", "--seed", "779", "--self-check"], check=True, capture_output=True)
    data = load_vqa(tmp_path)
    assert len(data) == 120
    seen = score_predictions(predict(ChatEngine(adapter), data, progress=False), data)["overall"]
    assert seen >= MIN_ACCURACY, f"accuracy {seen:.1f} % on the independent renderer's scenes"


def test_the_shipped_model_has_a_card_and_is_the_app_default():
    assert (DEFAULT_MODEL / "config.json").exists() and (DEFAULT_MODEL / "README.md").exists()
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert Path(app.parse_args([]).model).resolve() == DEFAULT_MODEL.resolve()


def test_it_answers_from_the_image(adapter, examples):
    seen = score_predictions(predict(ChatEngine(adapter), examples, progress=False), examples)["overall"]
    blind = score_predictions(predict(ChatEngine(adapter), examples, progress=False, blind=True), examples)["overall"]
    assert seen >= MIN_ACCURACY, f"accuracy {seen:.1f} %"
    assert seen - blind >= MIN_GAIN_OVER_BLIND, f"accuracy {seen:.1f} % vs blind {blind:.1f} %"


def test_the_app_with_no_flags_serves_it_and_answers_its_examples(adapter, tmp_path):
    """`python app.py` as a user starts it: the shipped model answers the example questions.

    Every answer must be the shipped model's own, as the engine gives it, and each must be right
    (the model shipped before this one counted 3 green objects for 2 in shapes-2.png).
    """
    examples = [e for e in json.loads((ROOT / "assets" / "examples.json").read_text()) if "answer" in e]
    assert len(examples) >= 3
    engine = ChatEngine(adapter)
    greedy = GenerationSettings(max_new_tokens=8)
    with serve_app([], tmp_path) as url:
        client = Client(url, verbose=False)
        answers = []
        for example in examples:
            client.reset_session()
            image = str(ROOT / "assets" / example["file"])
            reply = client.predict({"text": example["question"], "files": [handle_file(image)]}, 8, False, 0.7, api_name="/chat")
            assert reply[0] == engine.answer(image, example["question"], settings=greedy)
            answers.append(reply[0])
        # The photo among the examples gets the note (what the model knows), not an answer or a map.
        photos = [e for e in json.loads((ROOT / "assets" / "examples.json").read_text()) if e["file"].endswith(".jpg")]
        assert photos
        for example in photos:
            client.reset_session()
            image = handle_file(str(ROOT / "assets" / example["file"]))
            reply = client.predict({"text": example["question"], "files": [image]}, 8, False, 0.7, api_name="/chat")
            assert len(reply) == 1 and reply[0].startswith(BOUNDARY) and "MMCHAT_MODEL" in reply[0]
    right = sum(a == e["answer"] for a, e in zip(answers, examples))
    assert right == len(examples), list(zip(answers, examples))


def test_it_declines_emoji_drawn_like_its_scenes(adapter, emoji_font):
    """Emoji on a light canvas (bright filled figures, like a scene's objects: the gate's hardest
    pictures, and a source it was not trained on) are declined, at least 17 of 20 (the gate it
    replaced let half of them through); the app's own scenes are not."""
    rng = random.Random(11)
    declined = [not adapter.world_gate.image_in_world(out_of_world_image("emoji", rng)) for _ in range(20)]
    assert sum(declined) >= 17, declined
    for scene in ("shapes-1.png", "shapes-2.png"):
        assert adapter.world_gate.image_in_world(Image.open(ROOT / "assets" / scene))


def test_it_declines_photos_and_questions_outside_its_world(adapter):
    """Version 2: photos that ship in common packages and questions about other things are
    `unanswerable`; every phrasing form of a question of its world is answered as the template."""
    engine = ChatEngine(adapter)
    greedy = GenerationSettings(max_new_tokens=8)
    for question in ("What animal is this?", "How many objects are there?", "Describe the image."):
        assert engine.answer(ROOT / "assets" / "cheetah.jpg", question, settings=greedy) == UNANSWERABLE
    scene = ROOT / "assets" / "shapes-2.png"
    for question in ("Is there a dog?", "hello", "Write a poem about this.", "What time is it?"):
        assert engine.answer(scene, question, settings=greedy) == UNANSWERABLE
    template = engine.answer(scene, "How many green objects are there?", settings=greedy)
    assert template == "2"
    for form in ("how many green objects can you see", "COUNT THE GREEN OBJECTS.", "What is the number of green objects?"):
        assert engine.answer(scene, form, settings=greedy) == template
