"""Write the measured results into a model card's front matter (the hub's `model-index`).

    python -m mmchat evaluate --model M --data D --predictions P.json --results-json M/results/d.json ...
    python -m mmchat card M --results M/results/a.json M/results/b.json [--model-name NAME]

The card's body and its other metadata (license, language, tags, ...) stay as they are; the
`model-index` is rebuilt from the results files alone (huggingface_hub's `ModelCard` and
`EvalResult`), so no figure in it is typed by hand. `--metadata KEY=VALUE` sets other fields.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TASK = ("visual-question-answering", "Visual Question Answering")


def eval_result(record: dict[str, Any]) -> EvalResult:
    """One `--results-json` record as a hub evaluation result."""
    dataset = record["dataset"]
    metric = record.get("metric", "VQA accuracy")
    if record.get("blind"):
        metric += ", images blanked (blind baseline)"
    if record.get("limit"):
        metric += f", first {record['questions']} questions"
    return EvalResult(
        task_type=TASK[0],
        task_name=TASK[1],
        dataset_type=dataset["type"],
        dataset_name=dataset["name"],
        dataset_split=dataset.get("split"),
        metric_type="accuracy",
        metric_name=metric,
        metric_value=record["accuracy"],
    )


def parse_value(text: str) -> Any:
    """A `--metadata` value: JSON where it parses (lists, numbers), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def update_card(
    card_path: Path,
    records: Sequence[dict[str, Any]],
    model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ModelCard:
    """The card at `card_path` with its `model-index` made from `records` (and `metadata` set)."""
    card = ModelCard.load(card_path) if card_path.exists() else ModelCard("---\n---\n")
    data = card.data.to_dict()
    for key in ("model-index", "model_name", "eval_results"):
        data.pop(key, None)
    data.update(metadata or {})
    name = model_name or card_path.parent.resolve().name
    card.data = ModelCardData(**data, model_name=name, eval_results=[eval_result(r) for r in records] or None)
    if records:
        metrics = list(card.data.metrics or [])
        card.data.metrics = metrics + [m for m in ["accuracy"] if m not in metrics]
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmchat card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the model folder; its README.md is the card (made if missing)")
    parser.add_argument("--results", nargs="*", default=[], help="`evaluate --results-json` files, in the order to list them")
    parser.add_argument("--model-name", help="the name in model-index (default: the folder's name)")
    parser.add_argument("--metadata", nargs="*", default=[], metavar="KEY=VALUE", help="other front matter to set (JSON values parse)")
    args = parser.parse_args(argv)

    card_path = Path(args.model) / "README.md"
    try:
        records = [json.loads(Path(f).read_text()) for f in args.results]
        metadata = dict(item.split("=", 1) for item in args.metadata)
    except (OSError, json.JSONDecodeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = update_card(card_path, records, args.model_name, {k: parse_value(v) for k, v in metadata.items()})
    card.save(card_path)
    print(f"wrote {card_path}: {len(records)} results in its model-index")
    return 0


if __name__ == "__main__":
    sys.exit(main())
