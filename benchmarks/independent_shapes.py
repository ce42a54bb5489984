#!/usr/bin/env python3
"""Independent second renderer of the ShapesVQA spec (shared/specs/shapes-vqa.md).

Written from the spec only, to check that a model trained on the project's own renderer
generalises to scenes and question samplers built by someone else.  Only numpy and Pillow.

    python benchmarks/independent_shapes.py --out DIR --images N --seed S \
        [--side 224] [--questions-per-image 3] [--self-check]

Writes DIR/images/{image_id}.png, DIR/questions.json, DIR/annotations.json (VQA v2 layout)
and DIR/scenes.json (the ground-truth objects, for checking).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import permutations
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- vocabulary
# Copied from the spec on purpose, not imported from mmchat: this renderer must not share its code.

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, tuple[float, float]] = {"small": (0.12, 0.16), "large": (0.24, 0.30)}
FAMILIES: tuple[str, ...] = (
    "count",
    "exist",
    "query_color",
    "query_shape",
    "query_size",
    "relation",
    "compare",
)
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
COLOR_JITTER = 15
GAP_FRAC = 0.02  # minimum distance between bounding boxes
CENTRE_SEP_FRAC = 0.05  # minimum |dx| and |dy| between object centres
SUPERSAMPLE = 4  # sub-pixel samples per axis for anti-aliasing
# Triangle variants: height of the triangle as a fraction of its box side (base = box side).
TRIANGLE_VARIANTS: dict[str, float] = {"full": 1.0, "equilateral": float(np.sqrt(3.0) / 2.0)}


@dataclass
class Obj:
    shape: str
    color: str
    size: str
    cx: float  # box centre, pixels, continuous coordinates (pixel k covers [k, k+1))
    cy: float
    side: float  # bounding-box side in pixels
    rgb: tuple[int, int, int]  # jittered fill colour actually drawn


@dataclass
class Scene:
    image_id: int
    side: int
    background: tuple[int, int, int]
    noise_sigma: float
    triangle_variant: str
    objects: list[Obj]


@dataclass
class QA:
    family: str
    question: str
    answer: str


# --------------------------------------------------------------------------- scene sampling


def _fits(cand: Obj, placed: list[Obj], img_side: int) -> bool:
    """Spacing rules of the spec: boxes >= 2 % apart, centres >= 5 % apart in x and in y."""
    gap = GAP_FRAC * img_side
    sep = CENTRE_SEP_FRAC * img_side
    for o in placed:
        if abs(cand.cx - o.cx) < sep or abs(cand.cy - o.cy) < sep:
            return False
        half = (cand.side + o.side) / 2.0
        # Axis-aligned boxes are apart by >= gap iff they are apart along x or along y.
        if abs(cand.cx - o.cx) - half < gap and abs(cand.cy - o.cy) - half < gap:
            return False
    return True


def sample_scene(rng: np.random.Generator, image_id: int, side: int) -> Scene:
    n = int(rng.integers(1, 7))  # object count uniform over 1..6, never resampled
    while True:  # resample attributes only if the sizes cannot be packed at all
        attrs = [
            (str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(list(SIZES)))) for _ in range(n)
        ]
        sides = [float(rng.uniform(*SIZES[sz])) * side for _, _, sz in attrs]
        # Place the largest boxes first: rejection sampling succeeds far more often that way.
        order = sorted(range(n), key=lambda i: -sides[i])
        for _restart in range(40):
            placed: list[Obj] = []
            for i in order:
                shape, color, size = attrs[i]
                s = sides[i]
                for _try in range(300):
                    cx = float(rng.uniform(s / 2.0, side - s / 2.0))
                    cy = float(rng.uniform(s / 2.0, side - s / 2.0))
                    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
                    rgb = tuple(int(v) for v in np.clip(np.array(COLORS[color]) + jitter, 0, 255))
                    cand = Obj(shape, color, size, cx, cy, s, rgb)  # type: ignore[arg-type]
                    if _fits(cand, placed, side):
                        placed.append(cand)
                        break
                else:
                    break
            if len(placed) == n:
                # Shuffle so object order carries no information about size.
                perm = rng.permutation(n)
                objects = [placed[int(k)] for k in perm]
                bg = tuple(int(v) for v in rng.integers(200, 256, size=3))
                sigma = float(rng.uniform(0.0, 8.0))
                variant = str(rng.choice(list(TRIANGLE_VARIANTS)))
                return Scene(image_id, side, bg, sigma, variant, objects)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rasterisation


def _coverage(obj: Obj, xs: np.ndarray, ys: np.ndarray, variant: str) -> np.ndarray:
    """Boolean inside-test at the given sample points (continuous pixel coordinates)."""
    h = obj.side / 2.0
    if obj.shape == "circle":
        return (xs - obj.cx) ** 2 + (ys - obj.cy) ** 2 <= h * h
    if obj.shape == "square":
        return (np.abs(xs - obj.cx) <= h) & (np.abs(ys - obj.cy) <= h)
    # Upright isosceles triangle, apex up, base = box side, centred vertically in the box.
    height = TRIANGLE_VARIANTS[variant] * obj.side
    top = obj.cy - height / 2.0
    bottom = obj.cy + height / 2.0
    t = (ys - top) / height  # 0 at apex, 1 at base
    return (t >= 0.0) & (ys <= bottom) & (np.abs(xs - obj.cx) <= h * t)


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    side = scene.side
    img = np.empty((side, side, 3), dtype=np.float64)
    img[:] = np.array(scene.background, dtype=np.float64)
    offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    for obj in scene.objects:
        x0 = max(int(np.floor(obj.cx - obj.side / 2.0)) - 1, 0)
        x1 = min(int(np.ceil(obj.cx + obj.side / 2.0)) + 1, side)
        y0 = max(int(np.floor(obj.cy - obj.side / 2.0)) - 1, 0)
        y1 = min(int(np.ceil(obj.cy + obj.side / 2.0)) + 1, side)
        # Sub-sample grid over the object's box: shape (rows, S, cols, S).
        ys = (np.arange(y0, y1)[:, None] + offs[None, :])[:, :, None, None]
        xs = (np.arange(x0, x1)[:, None] + offs[None, :])[None, None, :, :]
        inside = _coverage(obj, xs, ys, scene.triangle_variant)
        alpha = inside.mean(axis=(1, 3))[:, :, None]  # fraction of covered sub-samples
        patch = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = patch * (1.0 - alpha) + np.array(obj.rgb, dtype=np.float64) * alpha
    # Pixel noise over the whole frame (background and objects alike).
    img += rng.normal(0.0, scene.noise_sigma, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- descriptions

Desc = tuple[str | None, str | None, str | None]  # (size, color, shape); None = unspecified


def matches(obj: Obj, d: Desc) -> bool:
    size, color, shape = d
    return (
        (size is None or obj.size == size)
        and (color is None or obj.color == color)
        and (shape is None or obj.shape == shape)
    )


def desc_text(d: Desc) -> str:
    size, color, shape = d
    words = [w for w in (size, color) if w is not None]
    words.append(shape if shape is not None else "object")
    return " ".join(words)


def unique_descs(objs: list[Obj], forms: Iterable[str]) -> list[tuple[Desc, int]]:
    """All descriptions of the given forms that match exactly one object, with its index."""
    out: list[tuple[Desc, int]] = []
    seen: set[Desc] = set()
    for form in forms:
        for o in objs:
            d: Desc = (
                o.size if "size" in form else None,
                o.color if "color" in form else None,
                o.shape if "shape" in form else None,
            )
            if d in seen:
                continue
            seen.add(d)
            hits = [i for i, p in enumerate(objs) if matches(p, d)]
            if len(hits) == 1:
                out.append((d, hits[0]))
    return out


RELATION_FORMS = ("color shape", "size shape", "size color shape", "color")


def rel_holds(a: Obj, b: Obj, rel: str) -> bool:
    if rel == "to the left of":
        return a.cx < b.cx
    if rel == "to the right of":
        return a.cx > b.cx
    if rel == "above":
        return a.cy < b.cy
    return a.cy > b.cy  # below


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


# --------------------------------------------------------------------------- candidates
# Each family lists every legal question for a scene as (template_key, question, answer).

Cand = tuple[str, str, str]


def cands_count(objs: list[Obj]) -> list[Cand]:
    out: list[Cand] = [("all", "How many objects are there?", str(len(objs)))]
    for sh in SHAPES:
        n = sum(o.shape == sh for o in objs)
        out.append(("shape", f"How many {sh}s are there?", str(n)))
    for c in COLORS:
        n = sum(o.color == c for o in objs)
        out.append(("color", f"How many {c} objects are there?", str(n)))
        for sh in SHAPES:
            n = sum(o.color == c and o.shape == sh for o in objs)
            out.append(("color_shape", f"How many {c} {sh}s are there?", str(n)))
    return out


def cands_exist(objs: list[Obj]) -> list[Cand]:
    out: list[Cand] = []
    for c in COLORS:
        for sh in SHAPES:
            yes = any(o.color == c and o.shape == sh for o in objs)
            out.append(("color_shape", f"Is there a {c} {sh}?", "yes" if yes else "no"))
            for sz in SIZES:
                yes = any(o.color == c and o.shape == sh and o.size == sz for o in objs)
                out.append(("size_color_shape", f"Is there a {sz} {c} {sh}?", "yes" if yes else "no"))
    return out


def cands_query_color(objs: list[Obj]) -> list[Cand]:
    return [
        (f"q_{desc_text(d).count(' ')}", f"What color is the {desc_text(d)}?", objs[i].color)
        for d, i in unique_descs(objs, ("size shape", "shape"))
    ]


def cands_query_shape(objs: list[Obj]) -> list[Cand]:
    return [
        (f"q_{desc_text(d).count(' ')}", f"What shape is the {desc_text(d)}?", objs[i].shape)
        for d, i in unique_descs(objs, ("color", "size color"))
    ]


def cands_query_size(objs: list[Obj]) -> list[Cand]:
    return [
        ("color_shape", f"What size is the {desc_text(d)}?", objs[i].size)
        for d, i in unique_descs(objs, ("color shape",))
    ]


def cands_relation(objs: list[Obj]) -> list[Cand]:
    descs = unique_descs(objs, RELATION_FORMS)
    out: list[Cand] = []
    for (d1, i1), (d2, i2) in permutations(descs, 2):
        if i1 == i2:
            continue
        for rel in RELATIONS:
            ans = "yes" if rel_holds(objs[i1], objs[i2], rel) else "no"
            out.append((rel, f"Is the {desc_text(d1)} {rel} the {desc_text(d2)}?", ans))
    return out


def cands_compare(objs: list[Obj]) -> list[Cand]:
    """Pairs of distinct colours/shapes; pairs where both counts are 0 are skipped (trivial)."""
    out: list[Cand] = []
    for a, b in permutations(COLORS, 2):
        na = sum(o.color == a for o in objs)
        nb = sum(o.color == b for o in objs)
        if na or nb:
            q = f"Are there more {a} objects than {b} objects?"
            out.append(("color", q, "yes" if na > nb else "no"))
    for a, b in permutations(SHAPES, 2):
        na = sum(o.shape == a for o in objs)
        nb = sum(o.shape == b for o in objs)
        if na or nb:
            out.append(("shape", f"Are there more {a}s than {b}s?", "yes" if na > nb else "no"))
    return out


CANDIDATES: dict[str, Callable[[list[Obj]], list[Cand]]] = {
    "count": cands_count,
    "exist": cands_exist,
    "query_color": cands_query_color,
    "query_shape": cands_query_shape,
    "query_size": cands_query_size,
    "relation": cands_relation,
    "compare": cands_compare,
}


# --------------------------------------------------------------------------- question sampling


class QuestionSampler:
    """Answer-first sampling with a running tally per family.

    For a scene and a family, the target answer is the least-used one (so far, within the family)
    among the answers this scene can produce; ties are broken at random.  Then a template is
    chosen uniformly among those that can yield that answer, then a question uniformly within it.
    Families come from shuffled blocks of all seven, so each family is asked equally often; a
    family with no legal question for the scene is deferred to the next slot/image.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.tally: dict[str, Counter[str]] = defaultdict(Counter)
        self.pending: list[str] = []

    def _refill(self) -> None:
        block = list(FAMILIES)
        self.rng.shuffle(block)
        self.pending.extend(block)

    def _pick(self, family: str, cands: list[Cand]) -> Cand:
        tally = self.tally[family]
        answers = sorted({a for _, _, a in cands})
        low = min(tally[a] for a in answers)
        target = str(self.rng.choice([a for a in answers if tally[a] == low]))
        with_ans = [c for c in cands if c[2] == target]
        templates = sorted({t for t, _, _ in with_ans})
        tmpl = str(self.rng.choice(templates))
        pool = [c for c in with_ans if c[0] == tmpl]
        return pool[int(self.rng.integers(len(pool)))]

    def questions(self, objs: list[Obj], k: int) -> list[QA]:
        out: list[QA] = []
        asked: set[str] = set()
        for _ in range(k):
            if len(self.pending) < 2 * len(FAMILIES):
                self._refill()
            for pos, fam in enumerate(self.pending):
                cands = [c for c in CANDIDATES[fam](objs) if c[1] not in asked]
                if cands:
                    self.pending.pop(pos)
                    _, q, a = self._pick(fam, cands)
                    self.tally[fam][a] += 1
                    asked.add(q)
                    out.append(QA(fam, q, a))
                    break
        return out


# --------------------------------------------------------------------------- output


def answer_type(family: str, answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    if family == "count":
        return "number"
    return "other"


def generate(out: Path, n_images: int, seed: int, side: int, k: int) -> tuple[list[Scene], list[dict]]:
    if not 96 <= side <= 512:
        raise SystemExit("--side must be within 96..512")
    (out / "images").mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    scene_seq, q_seq = root.spawn(2)
    sampler = QuestionSampler(np.random.default_rng(q_seq))
    scenes: list[Scene] = []
    questions: list[dict] = []
    annotations: list[dict] = []
    qid = 0
    for idx, child in enumerate(scene_seq.spawn(n_images)):
        rng = np.random.default_rng(child)  # one stream per image: images are independent
        image_id = idx + 1
        scene = sample_scene(rng, image_id, side)
        Image.fromarray(render(scene, rng), "RGB").save(out / "images" / f"{image_id}.png", compress_level=1)
        scenes.append(scene)
        for qa in sampler.questions(scene.objects, k):
            qid += 1
            questions.append({"image_id": image_id, "question_id": qid, "question": qa.question})
            annotations.append(
                {
                    "image_id": image_id,
                    "question_id": qid,
                    "question_type": qa.family,
                    "answer_type": answer_type(qa.family, qa.answer),
                    "multiple_choice_answer": qa.answer,
                    "answers": [{"answer": qa.answer, "answer_id": j} for j in range(1, 11)],
                }
            )
    (out / "questions.json").write_text(json.dumps({"questions": questions}))
    (out / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    scene_rows = []
    for s in scenes:
        row = asdict(s)
        for o in row["objects"]:
            o["cx"], o["cy"], o["side"] = round(o["cx"], 3), round(o["cy"], 3), round(o["side"], 3)
        scene_rows.append(row)
    (out / "scenes.json").write_text(json.dumps({"scenes": scene_rows}))
    return scenes, annotations


def summarise(scenes: list[Scene], annotations: list[dict]) -> None:
    print(f"images: {len(scenes)}  questions: {len(annotations)}")
    by_fam: dict[str, Counter[str]] = defaultdict(Counter)
    for a in annotations:
        by_fam[a["question_type"]][a["multiple_choice_answer"]] += 1
    for fam in FAMILIES:
        c = by_fam[fam]
        dist = " ".join(f"{k}:{v}" for k, v in sorted(c.items()))
        print(f"  {fam:<12} n={sum(c.values()):<5} {dist}")


# --------------------------------------------------------------------------- self-check
# Answers are re-derived by parsing the stored question text back, independently of the
# candidate generators above, and evaluated against the in-memory scene objects.

_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_Z = "|".join(SIZES)
_DESC = rf"(?:(?:{_Z}) )?(?:(?:{_C}) )?(?:{_S}|object)"
PARSERS: list[tuple[str, re.Pattern[str]]] = [
    ("count_all", re.compile(r"How many objects are there\?")),
    ("count_shape", re.compile(rf"How many ({_S})s are there\?")),
    ("count_color", re.compile(rf"How many ({_C}) objects are there\?")),
    ("count_color_shape", re.compile(rf"How many ({_C}) ({_S})s are there\?")),
    ("exist", re.compile(rf"Is there a ((?:(?:{_Z}) )?(?:{_C}) (?:{_S}))\?")),
    ("query_color", re.compile(rf"What color is the ((?:(?:{_Z}) )?(?:{_S}))\?")),
    ("query_shape", re.compile(rf"What shape is the ((?:(?:{_Z}) )?(?:{_C}) object)\?")),
    ("query_size", re.compile(rf"What size is the ((?:{_C}) (?:{_S}))\?")),
    ("relation", re.compile(rf"Is the ({_DESC}) (to the left of|to the right of|above|below) the ({_DESC})\?")),
    ("compare_color", re.compile(rf"Are there more ({_C}) objects than ({_C}) objects\?")),
    ("compare_shape", re.compile(rf"Are there more ({_S})s than ({_S})s\?")),
]


def parse_desc(text: str) -> tuple[Desc, str]:
    words = text.split()
    size = words.pop(0) if words[0] in SIZES else None
    color = words.pop(0) if words[0] in COLORS else None
    shape = None if words[0] == "object" else words[0]
    assert len(words) == 1
    form = " ".join(n for n, v in (("size", size), ("color", color), ("shape", shape)) if v)
    return (size, color, shape), form


def the(objs: list[Obj], text: str) -> Obj:
    d, _ = parse_desc(text)
    hits = [o for o in objs if matches(o, d)]
    assert len(hits) == 1, f"'the {text}' matches {len(hits)} objects"
    return hits[0]


def rederive(objs: list[Obj], q: str) -> tuple[str, str]:
    """Return (family, answer) for a question text, computed from scratch."""
    for name, pat in PARSERS:
        m = pat.fullmatch(q)
        if not m:
            continue
        g = m.groups()
        yn = {True: "yes", False: "no"}
        if name == "count_all":
            return "count", str(len(objs))
        if name == "count_shape":
            return "count", str(sum(o.shape == g[0] for o in objs))
        if name == "count_color":
            return "count", str(sum(o.color == g[0] for o in objs))
        if name == "count_color_shape":
            return "count", str(sum(o.color == g[0] and o.shape == g[1] for o in objs))
        if name == "exist":
            d, form = parse_desc(g[0])
            assert form in ("color shape", "size color shape")
            return "exist", yn[any(matches(o, d) for o in objs)]
        if name == "query_color":
            return "query_color", the(objs, g[0]).color
        if name == "query_shape":
            return "query_shape", the(objs, g[0]).shape
        if name == "query_size":
            return "query_size", the(objs, g[0]).size
        if name == "relation":
            for t in (g[0], g[2]):
                assert parse_desc(t)[1] in RELATION_FORMS, f"bad description form: {t}"
            a, b = the(objs, g[0]), the(objs, g[2])
            assert a is not b, "relation between an object and itself"
            return "relation", yn[rel_holds(a, b, g[1])]
        if name == "compare_color":
            assert g[0] != g[1]
            return "compare", yn[sum(o.color == g[0] for o in objs) > sum(o.color == g[1] for o in objs)]
        assert g[0] != g[1]
        return "compare", yn[sum(o.shape == g[0] for o in objs) > sum(o.shape == g[1] for o in objs)]
    raise AssertionError(f"question matches no template: {q!r}")


def self_check(out: Path, scenes: list[Scene]) -> None:
    by_id = {s.image_id: s for s in scenes}
    qs = json.loads((out / "questions.json").read_text())["questions"]
    anns = {a["question_id"]: a for a in json.loads((out / "annotations.json").read_text())["annotations"]}
    assert len(qs) == len(anns) and len({q["question_id"] for q in qs}) == len(qs)
    for q in qs:
        a = anns[q["question_id"]]
        scene = by_id[q["image_id"]]
        fam, ans = rederive(scene.objects, q["question"])
        assert a["image_id"] == q["image_id"]
        assert fam == a["question_type"], (q, a)
        assert ans == a["multiple_choice_answer"], (q, a, ans)
        assert a["answer_type"] == answer_type(fam, ans)
        assert [x["answer"] for x in a["answers"]] == [ans] * 10
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
    for s in scenes:
        objs = s.objects
        assert 1 <= len(objs) <= 6
        assert all(200 <= v <= 255 for v in s.background) and 0.0 <= s.noise_sigma <= 8.0
        for i, o in enumerate(objs):
            lo, hi = SIZES[o.size]
            assert lo * s.side <= o.side <= hi * s.side
            assert o.side / 2 <= o.cx <= s.side - o.side / 2 and o.side / 2 <= o.cy <= s.side - o.side / 2
            assert all(abs(c - n) <= COLOR_JITTER for c, n in zip(o.rgb, COLORS[o.color]))
            assert _fits(o, objs[:i], s.side), f"spacing rule broken in image {s.image_id}"
        # A 3x3 patch a little below each box centre lies inside every shape variant: its mean
        # must be the object's colour up to noise.
        img = np.asarray(Image.open(out / "images" / f"{s.image_id}.png"), dtype=np.float64)
        for o in objs:
            y, x = int(o.cy + 0.15 * o.side), int(o.cx)
            patch = img[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(axis=0)
            assert np.all(np.abs(patch - np.array(o.rgb)) <= 16), (s.image_id, o, patch)
    print(f"self-check passed: {len(qs)} answers re-derived, {len(scenes)} scenes spacing-checked")


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--questions-per-image", type=int, default=3)
    p.add_argument("--self-check", action="store_true", help="re-derive every answer and check the rules")
    args = p.parse_args(argv)
    scenes, annotations = generate(args.out, args.images, args.seed, args.side, args.questions_per_image)
    summarise(scenes, annotations)
    if args.self_check:
        self_check(args.out, scenes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
