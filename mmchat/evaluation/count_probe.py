"""Does a model count objects, or area? Count questions, scored by how many large objects they count.

Renders ShapesVQA count questions ("How many red objects are there?") and prints the accuracy by
the number of *large* objects among those counted, by the true count, and how the wrong answers
err. A model that reads area rather than objects counts a large object as two: right when every
counted object is small, wrong as soon as one is large, and its errors are overcounts.

    python -m mmchat count-probe models/mmchat-shapes
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from ..data.shapes import COLORS, SHAPES, QuestionSampler, ShapeObject, render_scene, sample_scene
from ..serving.engine import ChatEngine, GenerationSettings

PROG = "python -m mmchat count-probe"


def counted(objects: Sequence[ShapeObject], question: str) -> list[ShapeObject]:
    """The objects a count question counts: those of its colour and shape, if it names them."""
    words = question.rstrip("?").split()
    colors = [w for w in words if w in COLORS]
    shapes = [w[:-1] for w in words if w[:-1] in SHAPES]  # "circles" -> "circle"
    return [o for o in objects if (not colors or o.color == colors[0]) and (not shapes or o.shape == shapes[0])]


def count_probe(engine: ChatEngine, scenes: int = 300, seed: int = 1, batch_size: int = 64) -> dict:
    """{"overall": %, "n": questions, "by_large": {large objects counted: (%, n)} over the answers
    1-6, "by_count": {true count: (%, n)}, "over": the share of wrong answers that count too many}."""
    rng = random.Random(seed)
    sampler = QuestionSampler(("count",))
    items = []  # (image, question, answer, large objects counted)
    for _ in range(scenes):
        objects = sample_scene(rng, 224)
        image = render_scene(objects, rng, 224)
        for q in sampler.questions(objects, rng, 2):
            large = sum(o.size == "large" for o in counted(objects, q["question"]))
            items.append((image, q["question"], q["answer"], large))
    settings = GenerationSettings(max_new_tokens=4)
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        answers += engine.answer_batch([b[0] for b in batch], [b[1] for b in batch], settings)
    by_large, by_count, errors = defaultdict(list), defaultdict(list), Counter()
    for (_, _, truth, large), answer in zip(items, answers, strict=True):
        right = answer.strip() == truth
        if truth != "0":  # nothing counted: no size to err by
            by_large[large].append(right)
        by_count[int(truth)].append(right)
        if not right:
            errors["over" if answer.strip().isdigit() and int(answer) > int(truth) else "other"] += 1

    def table(groups: dict[int, list[bool]]) -> dict[int, tuple[float, int]]:
        return {k: (100 * sum(v) / len(v), len(v)) for k, v in sorted(groups.items())}

    n_errors = sum(errors.values())
    return {
        "overall": 100 * sum(sum(v) for v in by_count.values()) / len(items),
        "n": len(items),
        "by_large": table(by_large),
        "by_count": table(by_count),
        "over": errors["over"] / n_errors if n_errors else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = count_probe(ChatEngine.from_pretrained(args.model, quantization="none", device="cpu"), args.scenes, args.seed)
    print(f"count questions: {result['overall']:.2f} % right over {result['n']}")
    for title, key in (("true count", "by_count"), ("large objects among those counted (count >= 1)", "by_large")):
        print(f"by {title}: " + ", ".join(f"{k}: {acc:.1f} % of {n}" for k, (acc, n) in result[key].items()))
    print(f"wrong answers that count too many: {100 * result['over']:.1f} %")


if __name__ == "__main__":
    main()
