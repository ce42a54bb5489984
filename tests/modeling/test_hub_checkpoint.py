"""A saved checkpoint carries its code: copied anywhere, it loads and answers without this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmchat.modeling import MMChatForConditionalGeneration, MMChatProcessor

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "mmchat-shapes"
CODE_FILES = ("configuration_mmchat.py", "modeling_mmchat.py", "fusion.py", "processing_mmchat.py")
EXAMPLES = [e for e in json.loads((ROOT / "assets" / "examples.json").read_text()) if "answer" in e]


def answer_here(path: str, image: Image.Image, question: str) -> str:
    """The standard recipe, in this process (mmchat imported, no remote code)."""
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run_elsewhere(checkpoint: str, questions: list[tuple[str, str]], tmp_path: Path) -> dict:
    """tests/modeling/hub_recipe.py in a Python that cannot import mmchat: another cwd, no PYTHONPATH."""
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")  # the remote code lands here, not in ~/.cache
    env["HF_HUB_OFFLINE"] = "1"
    script = cwd / "recipe.py"
    script.write_text((Path(__file__).parent / "hub_recipe.py").read_text())
    done = subprocess.run(
        [sys.executable, str(script), checkpoint, str(tmp_path / "questions.json")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["mmchat_importable"], "the subprocess could import mmchat: the test proves nothing"
    # The classes came from the checkpoint's own files, as on the hub.
    assert result["processor"].startswith("transformers_modules.") and result["model"].startswith("transformers_modules.")
    return result


def test_saving_writes_the_code_and_auto_map(tiny_checkpoint):
    folder = Path(tiny_checkpoint)
    for name in CODE_FILES:
        assert (folder / name).read_text() == (ROOT / "mmchat" / "modeling" / name).read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mmchat.MMChatConfig",
        "AutoModelForImageTextToText": "modeling_mmchat.MMChatForConditionalGeneration",
    }
    processor = json.loads((folder / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing_mmchat.MMChatProcessor"}


def test_the_shipped_checkpoint_carries_the_current_code():
    for name in CODE_FILES:
        assert (SHIPPED / name).read_text() == (ROOT / "mmchat" / "modeling" / name).read_text(), (
            f"models/mmchat-shapes/{name} differs from mmchat/modeling/{name}: re-save the model "
            "(load it and call save_pretrained on the model and the processor) so the hub copy runs this code"
        )


def test_here_the_auto_classes_load_our_own_classes_without_remote_code():
    processor = AutoProcessor.from_pretrained(SHIPPED)
    model = AutoModelForImageTextToText.from_pretrained(SHIPPED)
    assert type(processor) is MMChatProcessor and type(model) is MMChatForConditionalGeneration


def test_a_copied_tiny_checkpoint_answers_as_it_does_here(tiny_checkpoint, shapes_image, tmp_path):
    image = tmp_path / "scene.png"
    shapes_image.save(image)
    questions = [(str(image), "What color is the square?"), (str(image), "How many objects are there?")]
    expected = [answer_here(tiny_checkpoint, shapes_image, q) for _, q in questions]
    result = run_elsewhere(tiny_checkpoint, questions, tmp_path)
    assert result["recipe"] == expected
    assert result["pipeline"] == expected


@pytest.mark.skipif(not EXAMPLES, reason="assets/examples.json lists no answered examples")
def test_the_shipped_model_answers_right_from_a_copy(tmp_path):
    questions = [(str(ROOT / "assets" / e["file"]), e["question"]) for e in EXAMPLES]
    result = run_elsewhere(str(SHIPPED), questions, tmp_path)
    answers = [e["answer"] for e in EXAMPLES]
    assert result["recipe"] == answers
    assert result["pipeline"] == answers


def test_chat_images_come_one_per_conversation(tiny_checkpoint, shapes_image, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    path = tmp_path / "scene.png"
    shapes_image.save(path)
    messages = [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "Hi?"}]}]
    batch = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    direct = processor(images=shapes_image, text=processor.apply_chat_template(messages, add_generation_prompt=True))
    assert torch.equal(batch["pixel_values"], direct["pixel_values"])
    assert torch.equal(batch["input_ids"], direct["input_ids"])
    with pytest.raises(ValueError, match="one image per conversation; got 2"):
        processor(images=[[shapes_image, shapes_image]], text="<|user|>Hi?<|end|><|assistant|>")
    with pytest.raises(ValueError, match="images and text only"):
        processor(images=shapes_image, text="Hi?", videos=[[shapes_image]])
