"""The answer-balanced loss: a long answer weighs no more than a one-word one."""

from __future__ import annotations

import math

import torch

from mmchat.training.balanced import answer_balanced_loss
from mmchat.training.conversations import IGNORE_INDEX

V = 5


def test_each_answer_weighs_the_same_however_long() -> None:
    # Row 0: a one-token answer predicted perfectly, then a three-token answer at uniform odds.
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX, 1, 1, 1, IGNORE_INDEX]])
    logits = torch.zeros(1, 8, V)
    logits[0, 0, 2] = 100.0  # position 0 predicts label 1
    # Per answer: 0 and log V; the mean over the two answers, where a token mean would give 3/4 log V.
    assert math.isclose(answer_balanced_loss(logits, labels).item(), math.log(V) / 2, rel_tol=1e-5)


def test_length_power_sets_how_much_a_long_answer_weighs() -> None:
    # As above: a one-token answer right, a three-token one at uniform odds (log V a token).
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX, 1, 1, 1, IGNORE_INDEX]])
    logits = torch.zeros(1, 8, V)
    logits[0, 0, 2] = 100.0
    # power 0.5: the long answer's tokens weigh 1/sqrt(3) each, so it counts sqrt(3) times a short one.
    assert math.isclose(answer_balanced_loss(logits, labels, 0.5).item(), math.sqrt(3) * math.log(V) / 2, rel_tol=1e-5)
    # power 0: every token weighs 1, as a token sum would, over the two answers.
    assert math.isclose(answer_balanced_loss(logits, labels, 0.0).item(), 3 * math.log(V) / 2, rel_tol=1e-5)


def test_answers_are_counted_per_row() -> None:
    # Two rows, each one answer running to the row's end: answers in different rows stay apart.
    labels = torch.tensor([[IGNORE_INDEX, 1, 1], [IGNORE_INDEX, 3, 3]])
    logits = torch.zeros(2, 3, V)
    logits[0, :, 1] = 100.0  # row 0 right, row 1 uniform
    assert math.isclose(answer_balanced_loss(logits, labels).item(), math.log(V) / 2, rel_tol=1e-5)


def test_a_run_with_answer_balanced_loss_saves_a_model_that_loads(tmp_path) -> None:
    import json

    from mmchat.serving.loading import load_model
    from mmchat.training.train import main

    out = tmp_path / "run"
    main(["--out", str(out), "--preset", "tiny", "--batch-size", "4", "--steps", "2", "--log-every", "1",
          "--eval-every", "2", "--eval-images", "1", "--num-workers", "0", "--answer-balanced",
          "--family-weights", "describe=4"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(record["loss"]) for record in log)
    adapter = load_model(out / "final", device="cpu")
    assert not any(name.startswith("model.") for name in adapter.model.state_dict())  # the plain model's keys
