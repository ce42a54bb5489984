"""Training: a short CPU run saves a checkpoint the app can serve, logs eval accuracy, resumes."""

from __future__ import annotations

import json

import pytest

from mmchat.data.shapes import COLORS, SHAPES, SIZES
from mmchat.serving.loading import load_model
from mmchat.training.factory import build_processor
from mmchat.training.train import (
    PRESETS,
    TrainConfig,
    lr_lambda,
    main,
    parse_family_weights,
    parse_object_weights,
    tokenizer_corpus,
)


def test_short_run_saves_loadable_model_and_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["--out", str(out), "--preset", "tiny", "--batch-size", "4", "--log-every", "2",
              "--eval-every", "4", "--save-every", "2", "--eval-images", "2", "--num-workers", "0"]
    main([*common, "--steps", "4"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert "eval_accuracy" in log[-1] and set(log[-1]["eval_per_family"]) >= {"count", "relation"}

    main([*common, "--steps", "6", "--resume"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]  # continued from step 4, not restarted

    adapter = load_model(out / "final", device="cpu")
    assert adapter.family == "mmchat" and adapter.model.config.text_config.hidden_size == 64
    # The saved model carries its code and auto_map: it loads from the hub without mmchat.
    assert (out / "final" / "modeling_mmchat.py").is_file() and (out / "final" / "processing_mmchat.py").is_file()
    assert "AutoModelForImageTextToText" in json.loads((out / "final" / "config.json").read_text())["auto_map"]
    assert "AutoProcessor" in json.loads((out / "final" / "processor_config.json").read_text())["auto_map"]


def test_a_run_stops_early_on_its_schedule_and_resumes_with_a_new_mix(tmp_path):
    out = tmp_path / "run"
    common = ["--out", str(out), "--preset", "tiny", "--batch-size", "4", "--log-every", "1", "--warmup", "1",
              "--steps", "6", "--save-every", "100", "--eval-every", "100", "--eval-images", "1", "--num-workers", "0"]
    main([*common, "--stop-at", "3"])
    assert (out / "checkpoints" / "step-3").exists() and not (out / "final").exists()
    main([*common, "--resume", "--family-weights", "where=5"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    schedule = lr_lambda(TrainConfig(steps=6, warmup=1))
    assert [r["lr"] for r in log] == pytest.approx([1e-3 * schedule(step) for step in range(1, 7)])
    assert (out / "final").exists()


def test_decay_by_time_ends_the_cosine_with_the_time_box():
    """On a GPU the step rate is unknown before the run: the LR reaches its floor when --max-minutes does."""
    cfg = TrainConfig(steps=100_000, warmup=1, max_minutes=2.0, decay_by_time=True)
    clock = {"s": 0.0}
    schedule = lr_lambda(cfg, lambda: clock["s"])
    assert schedule(10) == pytest.approx(1.0, abs=1e-3)  # early, by steps and by time
    clock["s"] = 60.0  # half the box
    assert schedule(10) == pytest.approx(cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5)
    clock["s"] = 120.0
    assert schedule(10) == pytest.approx(cfg.min_lr_ratio)
    # Without the flag the clock is ignored.
    assert lr_lambda(TrainConfig(steps=100_000, warmup=1, max_minutes=2.0), lambda: 120.0)(10) == pytest.approx(1.0, abs=1e-3)


def test_alignment_stage_then_vqa(tmp_path):
    align, vqa = tmp_path / "align", tmp_path / "vqa"
    main(["--out", str(align), "--stage", "align", "--preset", "tiny", "--steps", "2", "--batch-size", "4",
          "--log-every", "1", "--num-workers", "0"])
    record = json.loads((align / "log.jsonl").read_text().splitlines()[-1])
    assert {"itc", "itm", "itc_acc", "itm_acc"} <= set(record)
    main(["--out", str(vqa), "--init-from", str(align / "final"), "--steps", "2", "--batch-size", "4",
          "--log-every", "2", "--eval-images", "1", "--num-workers", "0"])
    assert load_model(vqa / "final", device="cpu").family == "mmchat"


def test_every_answer_of_the_spec_is_one_token_for_a_new_model():
    """Answers follow `<|assistant|>` with no space, so the BPE must know them in that form."""
    processor = build_processor(32, tokenizer_corpus(n_scenes=300), PRESETS["shapes-small"]["text"]["vocab_size"])
    answers = [*COLORS, *SHAPES, *SIZES, "yes", "no", *map(str, range(7))]
    split = {a: processor.tokenizer.tokenize(a) for a in answers}
    assert all(len(tokens) == 1 for tokens in split.values()), split


def test_family_weights_flag():
    assert parse_family_weights(["relation=3", "count=1.5"]) == {"relation": 3.0, "count": 1.5}
    assert parse_family_weights([]) is None
    with pytest.raises(SystemExit, match="FAMILY=WEIGHT"):
        parse_family_weights(["relations=3"])


def test_object_weights_flag():
    assert parse_object_weights(["5=2", "6=2.5"]) == {5: 2.0, 6: 2.5}
    assert parse_object_weights([]) is None
    with pytest.raises(SystemExit, match="COUNT=WEIGHT.*got \\[7\\]"):
        parse_object_weights(["7=1"])
    with pytest.raises(SystemExit, match="COUNT=WEIGHT"):
        parse_object_weights(["many=2"])


def test_a_time_limit_ends_the_run_early_with_a_saved_model(tmp_path):
    out = tmp_path / "run"
    main(["--out", str(out), "--preset", "tiny", "--batch-size", "2", "--steps", "1000", "--log-every", "1",
          "--eval-every", "1000", "--save-every", "1000", "--eval-images", "1", "--num-workers", "0",
          "--max-minutes", "0.00001"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1]  # ended after its first step, not at step 1,000
    assert load_model(out / "final", device="cpu").family == "mmchat"


def test_a_clock_following_schedule_reaches_its_floor_when_the_time_box_ends(tmp_path):
    """--decay-by-time: the learning rate falls with the seconds trained, whatever --steps says."""
    out = tmp_path / "run"
    main(["--out", str(out), "--preset", "tiny", "--batch-size", "2", "--steps", "1000000", "--log-every", "1",
          "--eval-every", "1000000", "--save-every", "1000000", "--eval-images", "1", "--num-workers", "0",
          "--warmup", "1", "--lr", "1e-3", "--max-minutes", "0.05", "--decay-by-time"])
    lrs = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert 3 <= len(lrs) < 1000000  # ended by the clock
    assert lrs[0] > 0.9e-3 and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] < 0.2e-3  # near the floor (5 % of 1e-3) at the end of the 3 s box
