"""Training across two processes (gloo on the CPU), launched the way README says, for a few steps.

Checks what a user of `accelerate launch` relies on: both processes trained, on different data;
the evaluation they shared out and gathered gives the answers and figures a single-process
evaluation of the saved model gives; the saved model loads and answers in the app's engine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmchat.data.vqa import load_vqa
from mmchat.evaluation.evaluate import predict
from mmchat.evaluation.vqa_metric import score_predictions
from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.loading import load_model
from mmchat.training.train import TrainConfig, lr_lambda

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_training(*args: str) -> None:
    """`ACCELERATE_USE_CPU=1 accelerate launch --config_file cpu_2proc.yaml -m mmchat train ARGS`, as README says."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
               "--main_process_port", str(free_port()), "-m", "mmchat", "train", *args]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_two_processes_train_on_different_data_and_evaluate_like_one(tmp_path):
    out = tmp_path / "run"
    # Enough steps at a high rate that the answers are not all empty (26 % on its 42 questions here).
    launch_training(
        "--out", str(out), "--preset", "tiny", "--steps", "24", "--batch-size", "8", "--lr", "3e-3",
        "--warmup", "1", "--log-every", "12", "--eval-every", "24", "--save-every", "24",
        "--eval-images", "6", "--num-workers", "0",
    )  # fmt: skip

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [12, 24]  # one log for both processes, written once
    assert log[0]["processes"] == 2
    first_batches = log[0]["first_batch_crc"]
    assert len(first_batches) == 2 and first_batches[0] != first_batches[1]  # each drew its own data
    # The learning rate follows the --steps schedule once per optimizer step, as with one process
    # (a scheduler prepared by accelerate would step once per process).
    schedule = lr_lambda(TrainConfig(steps=24, warmup=1))
    assert [r["lr"] for r in log] == pytest.approx([3e-3 * schedule(12), 3e-3 * schedule(24)])

    # The evaluation during training, shared out between the two processes and gathered, against
    # one process answering the same split with the saved model.
    examples = load_vqa(out / "eval-data")
    engine = ChatEngine(load_model(out / "final", quantization="none", device="cpu"))
    alone = predict(engine, examples, batch_size=64, progress=False)
    in_training = json.loads((out / "eval-predictions.json").read_text())
    assert in_training == alone
    scores = score_predictions(alone, examples)
    assert log[-1]["eval_accuracy"] == round(scores["overall"], 2)
    assert log[-1]["eval_per_family"] == {k: round(v, 1) for k, v in scores["per_question_type"].items()}

    # The saved model answers through the chat path, as the app would, what the evaluation said.
    first = examples[0]
    answer = engine.answer(first.image_path, first.question, settings=GenerationSettings(max_new_tokens=8))
    assert answer == alone[0]["answer"]


def test_the_alignment_stage_trains_across_processes(tmp_path):
    """It leaves the LM head unused: without DDP's unused-parameter search its second step fails."""
    out = tmp_path / "align"
    launch_training("--out", str(out), "--stage", "align", "--preset", "tiny", "--steps", "2", "--batch-size", "2",
                    "--log-every", "1", "--num-workers", "0")  # fmt: skip
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and log[0]["processes"] == 2
    assert load_model(out / "final", quantization="none", device="cpu").family == "mmchat"

