"""The model card: its model-index is built from `evaluate --results-json` output, its body kept."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from mmchat.data.shapes import write_dataset
from mmchat.evaluation import card as card_cli
from mmchat.evaluation.evaluate import main as evaluate

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "mmchat-shapes"
BODY = "# tiny\n\nA body the command must keep, [with a link](config.json).\n"


def front_matter(path: Path) -> dict:
    return yaml.safe_load(path.read_text().split("---\n")[1])


def test_evaluate_writes_results_that_become_the_model_index(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "shapes"
    write_dataset(data, n_images=3, seed=5, questions_per_image=4)
    results = tmp_path / "results.json"
    args = ["--model", tiny_checkpoint, "--data", str(data), "--predictions", str(tmp_path / "p.json"), "--device", "cpu"]
    assert evaluate([*args, "--results-json", str(results), "--dataset-name", "Shapes tiny", "--dataset-type", "shapes-vqa"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(results.read_text())
    # The printed figure and the written one are the same measurement.
    assert f"overall accuracy: {record['accuracy']:.2f} % over 12 questions" in printed
    assert record["dataset"] == {"name": "Shapes tiny", "type": "shapes-vqa", "split": "test", "folder": str(data)}
    assert record["quantization"] == "none" and record["device"] == "cpu" and not record["blind"]

    model = tmp_path / "model"
    model.mkdir()
    (model / "README.md").write_text("---\nlicense: apache-2.0\ntags: [a]\n---\n" + BODY)
    assert card_cli.main([str(model), "--results", str(results), "--metadata", 'language=["en"]']) == 0
    meta = front_matter(model / "README.md")
    assert meta["license"] == "apache-2.0" and meta["tags"] == ["a"] and meta["language"] == ["en"]
    assert meta["metrics"] == ["accuracy"]
    [entry] = meta["model-index"]
    assert entry["name"] == "model"
    [result] = entry["results"]
    assert result["dataset"] == {"name": "Shapes tiny", "type": "shapes-vqa", "split": "test"}
    assert result["metrics"][0]["value"] == record["accuracy"]
    assert ModelCard.load(model / "README.md").text.strip() == BODY.strip()


def test_a_blind_or_partial_run_says_so_in_the_metric_name():
    record = {"dataset": {"name": "d", "type": "t"}, "accuracy": 30.0, "questions": 10, "blind": True, "limit": 10}
    assert card_cli.eval_result(record).metric_name == "VQA accuracy, images blanked (blind baseline), first 10 questions"


def test_the_shipped_card_is_what_the_hub_reads():
    meta = front_matter(SHIPPED / "README.md")
    for key in ("license", "language", "library_name", "pipeline_tag", "tags", "datasets", "metrics", "model-index"):
        assert meta.get(key), f"the card's front matter has no {key}"
    # The pipeline it names is the one that loads it (tests/modeling/test_hub_checkpoint.py).
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    # Its model-index is exactly what `mmchat card` makes from the results files beside it.
    files = sorted((SHIPPED / "results").glob("*.json"))
    assert files, "models/mmchat-shapes/results/ holds no evaluation results"
    records = [json.loads(f.read_text()) for f in files]
    expected = card_cli.update_card(SHIPPED / "README.md", records).data.to_dict()["model-index"]
    assert meta["model-index"] == expected


def test_the_shipped_card_links_only_to_what_resolves_from_the_hub():
    text = (SHIPPED / "README.md").read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert target.startswith("https://") or (SHIPPED / target).exists(), f"link {target!r} would not resolve"
