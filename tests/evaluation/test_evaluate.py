"""The evaluation CLI: answers every question, writes predictions, prints accuracy per type."""

from __future__ import annotations

import json

import pytest

from mmchat.data.shapes import write_dataset
from mmchat.evaluation.evaluate import main


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes")
    write_dataset(path, n_images=3, seed=11, questions_per_image=4)
    return path


def test_cli_answers_every_question_and_reports_per_type(tiny_checkpoint, shapes_dir, tmp_path, capsys):
    out = tmp_path / "preds.json"
    code = main(["--model", tiny_checkpoint, "--data", str(shapes_dir), "--predictions", str(out),
                 "--device", "cpu", "--batch-size", "5"])
    assert code == 0
    predictions = json.loads(out.read_text())
    questions = json.loads((shapes_dir / "questions.json").read_text())["questions"]
    assert sorted(p["question_id"] for p in predictions) == sorted(q["question_id"] for q in questions)
    assert all(isinstance(p["answer"], str) for p in predictions)
    printed = capsys.readouterr().out
    assert "overall accuracy: " in printed and f"over {len(questions)} questions" in printed
    assert "per question_type:" in printed and "per answer_type:" in printed


def test_blind_mode_answers_from_a_blank_image(tiny_checkpoint, shapes_dir, tmp_path):
    seen, blind = tmp_path / "seen.json", tmp_path / "blind.json"
    common = ["--model", tiny_checkpoint, "--data", str(shapes_dir), "--device", "cpu"]
    assert main([*common, "--predictions", str(seen)]) == 0
    assert main([*common, "--predictions", str(blind), "--blind"]) == 0
    # The tiny model's gates are open, so blanking the image changes some answers.
    assert json.loads(seen.read_text()) != json.loads(blind.read_text())


def test_missing_model_is_a_clear_error(shapes_dir, tmp_path, capsys):
    code = main(["--model", str(tmp_path / "none"), "--data", str(shapes_dir), "--predictions", str(tmp_path / "p.json")])
    assert code == 2
    assert "config.json or a hub id" in capsys.readouterr().err


def test_the_second_look_is_counted_and_can_be_left_out(tiny_checkpoint, shapes_dir, tmp_path, capsys):
    """A checkpoint with `second_look.json` is scored as the app answers, through it; the CLI says how
    many questions it asked again, and `--no-second-look` measures the model without it."""
    import shutil

    from mmchat.serving.second_look import SecondLook

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    SecondLook(("count",), 1.01, 4).save(model)  # over 1: every count question is asked again
    annotations = json.loads((shapes_dir / "annotations.json").read_text())["annotations"]
    counts = sum(a["question_type"] == "count" for a in annotations)
    assert counts > 0
    common = ["--model", str(model), "--data", str(shapes_dir), "--device", "cpu", "--dtype", "float32"]
    assert main([*common, "--predictions", str(tmp_path / "a.json")]) == 0
    assert f"second look (shifted views): {counts} of {len(annotations)} questions asked again" in capsys.readouterr().out
    assert main([*common, "--predictions", str(tmp_path / "b.json"), "--no-second-look"]) == 0
    assert "second look" not in capsys.readouterr().out
