"""Run by tests/modeling/test_hub_checkpoint.py in a fresh Python where mmchat is NOT importable.

    python hub_recipe.py CHECKPOINT QUESTIONS.json   # [[image path, question], ...]

Loads the checkpoint with `trust_remote_code=True` only, answers each question through the
standard image-text-to-text recipe and through `pipeline("image-text-to-text")`, and prints JSON.
"""

import importlib.util
import json
import sys

from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

path, questions_file = sys.argv[1:3]
questions = json.load(open(questions_file))
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
recipe = []
for image_path, question in questions:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image_path), text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    recipe.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())

pipe = pipeline("image-text-to-text", model=path, trust_remote_code=True)
piped = []
for image_path, question in questions:
    messages = [{"role": "user", "content": [{"type": "image", "path": image_path}, {"type": "text", "text": question}]}]
    result = pipe(text=messages, max_new_tokens=8, do_sample=False, return_full_text=False)
    piped.append(result[0]["generated_text"].strip())

print(json.dumps({
    "mmchat_importable": importlib.util.find_spec("mmchat") is not None,
    "processor": type(processor).__module__,
    "model": type(model).__module__,
    "recipe": recipe,
    "pipeline": piped,
}))
