"""The object-centre loss: per-patch targets from a scene, a head that learns them, a plain checkpoint."""

from __future__ import annotations

import json
import random

import torch

from mmchat.data.shapes import ShapeObject, render_scene
from mmchat.serving.loading import load_model
from mmchat.training.centres import CentreModel, centre_grid
from mmchat.training.conversations import IGNORE_INDEX, KINDS, Conversation, ConversationCollator, centre_targets
from mmchat.training.factory import build_tiny
from mmchat.training.train import main


def scene() -> list[ShapeObject]:
    # 224 px image, 4 x 4 grid of 56 px cells: centres in cells (0, 0), (1, 3) and (3, 2).
    return [ShapeObject("circle", "red", "small", 20, 30, 30, 224),
            ShapeObject("square", "blue", "large", 200, 100, 60, 224),
            ShapeObject("triangle", "red", "small", 140, 180, 30, 224)]


def test_each_object_marks_the_patch_of_its_centre_with_its_kind():
    targets = centre_targets([scene(), None], grid=4)
    assert targets.shape == (2, 16)
    marked = {i: KINDS[c - 1] for i, c in enumerate(targets[0].tolist()) if c > 0}
    assert marked == {0: ("red", "circle", "small"), 1 * 4 + 3: ("blue", "square", "large"),
                      3 * 4 + 2: ("red", "triangle", "small")}
    assert (targets[0] >= 0).all()
    assert (targets[1] == IGNORE_INDEX).all()  # an image without a known scene (easy-vqa) adds no loss


def test_the_head_learns_where_the_centres_are_and_the_vqa_loss_still_trains():
    model, processor = build_tiny(seed=0)
    grid = centre_grid(model)
    conversations = [Conversation(render_scene(scene(), random.Random(i), 224),
                                  [("How many red objects are there?", "2")], scene()) for i in range(4)]
    batch = ConversationCollator(processor, centre_grid=grid)(conversations)
    trainee = CentreModel(model, weight=1.0)
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        out = trainee(**batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append(out)
    first = history[0]
    assert out["centre_loss"] < first["centre_loss"] / 4
    assert out["vqa_loss"] < first["vqa_loss"]
    assert out["centre_count_acc"] == 1.0  # as many centres found as there are objects, in every image
    with torch.no_grad():
        patches = model.encode_images(batch["pixel_values"]).image_states[:, -grid * grid:]
        found = trainee.head(patches).argmax(-1)
    assert torch.equal(found, batch["centre_targets"])


def test_a_run_with_the_centre_loss_logs_it_and_saves_the_plain_model(tmp_path):
    out = tmp_path / "run"
    main(["--out", str(out), "--preset", "tiny", "--batch-size", "4", "--steps", "2", "--log-every", "1",
          "--eval-every", "2", "--eval-images", "1", "--num-workers", "0", "--centre-loss", "0.5"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"centre_loss", "vqa_loss", "centre_count_acc"} <= set(log[0])
    adapter = load_model(out / "final", device="cpu")
    names = set(adapter.model.state_dict())
    assert not any("head" in n and "lm_head" not in n for n in names)  # the training-only head stayed behind
