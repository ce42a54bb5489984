"""ShapesVQA version 2 measures beside the VQA accuracy: the boundary and the descriptions.

- `unanswerable` share: how often the answer is exactly `unanswerable` (the spec's decline);
- false declines: of the questions whose true answer is not `unanswerable`, the share declined;
- declines where due: of those whose true answer is `unanswerable`, the share declined;
- `describe`: the `{size} {color} {shape}` triples read out of each answer in order; the exact
  list (right objects, right order, nothing extra) and the triples' F1 (pooled over the set:
  matched triples over all predicted and all true ones, each triple counted as often as it occurs).

No torch: it runs wherever the predictions file is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.shapes import COLORS, SHAPES, SIZES
from ..data.vqa import VQAExample

UNANSWERABLE = "unanswerable"
_TRIPLE = re.compile(rf"\b({'|'.join(SIZES)})\s+({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\b")


def triples(text: str) -> list[tuple[str, str, str]]:
    """The `{size} {color} {shape}` triples of a description, in the order they are named."""
    return [tuple(m) for m in _TRIPLE.findall(text.lower())]


def _declined(answer: str) -> bool:
    return answer.strip().lower().rstrip(".") == UNANSWERABLE


def v2_scores(predictions: Sequence[Mapping[str, Any]], examples: Sequence[VQAExample]) -> dict[str, Any]:
    """Boundary and describe measures (percent; F1 in [0, 1]); a measure with no questions is None."""
    answers = {int(p["question_id"]): str(p["answer"]) for p in predictions}
    scored = [(ex, answers[ex.question_id]) for ex in examples if ex.question_id in answers]
    in_world = [a for ex, a in scored if ex.multiple_choice_answer != UNANSWERABLE]
    out_world = [a for ex, a in scored if ex.multiple_choice_answer == UNANSWERABLE]
    described = [(ex, a) for ex, a in scored if ex.question_type == "describe"]

    def percent(hits: int, n: int) -> float | None:
        return round(100 * hits / n, 2) if n else None

    matched = predicted = true = exact = 0
    for ex, answer in described:
        said, truth = triples(answer), triples(ex.multiple_choice_answer or "")
        exact += said == truth
        matched += sum((Counter(said) & Counter(truth)).values())
        predicted, true = predicted + len(said), true + len(truth)
    f1 = 2 * matched / (predicted + true) if predicted + true else 0.0
    return {
        "n": len(scored),
        "unanswerable_share": percent(sum(_declined(a) for _, a in scored), len(scored)),
        "false_declines": percent(sum(_declined(a) for a in in_world), len(in_world)),
        "n_in_world": len(in_world),
        "declined_out_of_world": percent(sum(_declined(a) for a in out_world), len(out_world)),
        "n_out_of_world": len(out_world),
        "describe_exact": percent(exact, len(described)),
        "describe_f1": round(f1, 4) if described else None,
        "n_describe": len(described),
    }


def format_v2_scores(scores: Mapping[str, Any]) -> str:
    lines = [f"answered unanswerable: {scores['unanswerable_share']:.2f} % of {scores['n']} questions"]
    if scores["n_in_world"]:
        lines.append(f"false declines (in-world questions): {scores['false_declines']:.2f} % of {scores['n_in_world']}")
    if scores["n_out_of_world"]:
        lines.append(
            f"declined where the answer is unanswerable: {scores['declined_out_of_world']:.2f} % of {scores['n_out_of_world']}"
        )
    if scores["n_describe"]:
        lines.append(
            f"describe: exact list {scores['describe_exact']:.2f} %, triple F1 {scores['describe_f1']:.4f} "
            f"over {scores['n_describe']} descriptions"
        )
    return "\n".join(lines)
