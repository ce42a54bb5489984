"""Answer every question of a VQA-layout folder and score it with the official VQA accuracy.

    python -m mmchat evaluate --model PATH --data DIR --predictions OUT.json [--results-json SCORES.json]

`--results-json` also writes the scores with what was measured (model, data set, quantization),
the input of `python -m mmchat card`, which puts them in a model card's `model-index`.

Answers come through the serving path (`ChatEngine`: the same upload checks and family adapter
as the app), so a folder is scored on exactly what the app would say.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ..data.vqa import VQAExample, load_vqa
from ..serving.engine import ChatEngine, GenerationSettings, LoadError, ServingError
from ..serving.images import load_image
from ..serving.loading import DEFAULT_MODEL, DTYPES, QUANTIZATIONS
from .v2_metrics import format_v2_scores, v2_scores
from .vqa_metric import score_predictions


def predict(
    engine: ChatEngine,
    examples: Sequence[VQAExample],
    batch_size: int = 64,
    max_new_tokens: int = 64,
    progress: bool = True,
    blind: bool = False,
) -> list[dict]:
    """Greedy single-turn answers, batched: [{"question_id": int, "answer": str}].

    `blind` replaces every image by a flat grey one of the same size: the baseline that shows
    how much of the accuracy comes from the image rather than from the question alone.
    """
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    predictions = []
    for start in tqdm(range(0, len(examples), batch_size), disable=not progress, desc="answering", unit="batch"):
        batch = examples[start : start + batch_size]
        images = [load_image(ex.image_path) for ex in batch]
        if blind:
            images = [Image.new("RGB", image.size, (128, 128, 128)) for image in images]
        answers = engine.answer_batch(images, [ex.question for ex in batch], settings)
        predictions += [{"question_id": ex.question_id, "answer": a} for ex, a in zip(batch, answers)]
    return predictions


def format_scores(scores: dict) -> str:
    lines = [f"overall accuracy: {scores['overall']:.2f} % over {scores['n']} questions"]
    for key, title in (("per_question_type", "question_type"), ("per_answer_type", "answer_type")):
        lines.append(f"per {title}:")
        lines += [f"  {name:<14} {acc:6.2f} %" for name, acc in sorted(scores[key].items())]
    return "\n".join(lines)


def results_record(scores: dict, args: argparse.Namespace, engine: ChatEngine) -> dict:
    """The scores and what they measured, as `--results-json` writes them for the model card."""
    adapter = engine.adapter
    return {
        "model": args.model,
        "dataset": {
            "name": args.dataset_name or Path(args.data).name,
            "type": args.dataset_type or Path(args.data).name,
            "split": args.dataset_split,
            "folder": args.data,
        },
        "metric": "VQA accuracy",
        "accuracy": scores["overall"],
        "questions": scores["n"],
        "per_question_type": scores["per_question_type"],
        "per_answer_type": scores["per_answer_type"],
        "blind": args.blind,
        "limit": args.limit,
        "quantization": getattr(adapter, "quantization", None),
        "device": getattr(adapter, "device_name", None),
        "dtype": getattr(adapter, "dtype_name", None),
        "max_new_tokens": args.max_new_tokens,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmchat evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder, hub id, or openai:URL#MODEL_ID")
    parser.add_argument("--data", required=True, help="folder in the VQA v2 layout")
    parser.add_argument("--predictions", required=True, help="where to write the answers (JSON)")
    parser.add_argument("--batch-size", type=int, default=64)
    # A description of six objects is about 45 tokens; a one-word answer ends at once anyway.
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--quantization", default="auto", choices=QUANTIZATIONS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="weights' precision; auto: as the app picks it (bf16 on a GPU or a CPU with bf16 matmuls: AMX, AVX-512 bf16)")
    parser.add_argument("--draft-tokens", type=int, default=4,
                        help="speculative draft tokens a row, as the app (mmchat.serving.drafts); 0: plain decoding")
    parser.add_argument("--no-second-look", action="store_true",
                        help="leave out the checkpoint's second look (second_look.json), to measure what it adds")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    parser.add_argument("--blind", action="store_true", help="blank every image: the question-only baseline")
    parser.add_argument("--results-json", help="also write the scores and what they measured here (for `mmchat card`)")
    parser.add_argument("--dataset-name", help="the data set's name in --results-json (default: the folder's name)")
    parser.add_argument("--dataset-type", help="its id in --results-json, e.g. a hub data set id (default: the folder's name)")
    parser.add_argument("--dataset-split", default="test", help="its split in --results-json (default: test)")
    args = parser.parse_args(argv)

    try:
        engine = ChatEngine.from_pretrained(
            args.model, quantization=args.quantization, device=args.device, dtype=args.dtype, draft_tokens=args.draft_tokens
        )
        examples = load_vqa(args.data)
    except (LoadError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    examples = examples[: args.limit] if args.limit else examples
    if args.no_second_look:
        engine.adapter.second_look = None
    try:
        predictions = predict(engine, examples, args.batch_size, args.max_new_tokens, blind=args.blind)
    except ServingError as e:  # a model server that is down or refuses
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        # The scheduler thread ends here, not in the interpreter's teardown (which aborted the
        # process after long runs: "terminate called without an active exception", exit 134).
        engine.close()
    Path(args.predictions).write_text(json.dumps(predictions))
    if all(ex.answers for ex in examples):
        scores = score_predictions(predictions, examples)
        print(format_scores(scores))
        print(format_v2_scores(v2_scores(predictions, examples)))
        if engine.adapter.second_look is not None:
            looks = engine.scheduler.second_looks if engine.scheduler is not None else 0
            print(f"second look (shifted views): {looks} of {len(predictions)} questions asked again")
        if args.results_json:
            Path(args.results_json).write_text(json.dumps(results_record(scores, args, engine), indent=2) + "\n")
    else:
        print(f"wrote {len(predictions)} answers; {args.data} has no annotations to score them against")
        if args.results_json:
            print("error: no scores to write to --results-json without annotations", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
