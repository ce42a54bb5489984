"""ShapesVQA: render synthetic shape scenes and ask answer-balanced questions about them.

Implements `shared/specs/shapes-vqa.md` exactly (scene rules, question templates, VQA v2 file
layout), so a test set written by an independent renderer of the same spec is a fair test.

Pipeline: `sample_scene` (geometry) -> `QuestionSampler` / `sample_question` (text, answers) ->
`render_scene` (pixels). Training draws scenes on the fly (`mmchat.training.conversations`); fixed
evaluation sets are written with `write_dataset` or the CLI:

    python -m mmchat shapes --out data/shapes-test --images 1000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
FAMILIES: tuple[str, ...] = (
    "count",
    "exist",
    "query_color",
    "query_shape",
    "query_size",
    "relation",
    "compare",
)
# Outside the spec, for training: "Where is the red circle?" -> "top left". Asked only when given
# a weight (`family_weights`) or named (`write_dataset(families=...)`, to measure it); it teaches
# the model to read where one object lies, the step before comparing two (relation).
EXTRA_FAMILIES: tuple[str, ...] = ("where",)
# Version 2 of the spec adds `describe`: every object named, left to right. Asked only when named
# (`families=...`) or weighted, so that v1 data sets stay as they were.
V2_FAMILIES: tuple[str, ...] = ("describe",)
DESCRIBE_QUESTIONS: tuple[str, ...] = (
    "Describe the image.",
    "What is in the image?",
    "What do you see?",
    "Describe the picture.",
)
ANSWER_TYPES: dict[str, str] = {
    "count": "number",
    "exist": "yes/no",
    "query_color": "other",
    "query_shape": "other",
    "query_size": "other",
    "relation": "yes/no",
    "compare": "yes/no",
    "where": "other",
    "describe": "other",
}

# Scene rules from the spec; fractions are of the image side.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.12, 0.16), "large": (0.24, 0.30)}
COLOR_JITTER = 15
BACKGROUND_RANGE = (200, 255)
NOISE_SIGMA_RANGE = (0.0, 8.0)
OBJECT_COUNT_RANGE = (1, 6)
MIN_BOX_GAP = 0.02
MIN_CENTRE_OFFSET = 0.05
SIDE_RANGE = (96, 512)

_COLOR_NAMES = tuple(COLORS)
_SUPERSAMPLE = 4  # shapes are drawn 4x larger and box-filtered down: anti-aliased edges
_PLACEMENT_TRIES = 200  # random positions tried per object before the layout restarts
_PLACEMENT_RESTARTS = 20  # layouts tried before the object sizes are drawn again
# Standard normal quantiles at 65,536 equal-probability points: a table lookup with uint16 draws
# is about twice as fast as drawing float normals, and differs from exact Gaussian noise by far
# less than one grey level (tails are cut at 4.3 sigma, i.e. at most 35 levels for sigma = 8).
_NORMAL_QUANTILES = np.array(
    [statistics.NormalDist().inv_cdf((i + 0.5) / 65536) for i in range(65536)], dtype=np.float32
)


@dataclass
class ShapeObject:
    """One object of a scene; `cx`, `cy` (bounding-box centre) and `side` are in pixels."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    side: float
    image_side: float = 224  # the scene's side, for positions relative to the image

    def phrase(self) -> str:
        """Full description with an article, e.g. "a small red circle"."""
        return f"a {self.size} {self.color} {self.shape}"


# --------------------------------------------------------------------------- scenes


def _check_side(side: int) -> None:
    if not SIDE_RANGE[0] <= side <= SIDE_RANGE[1]:
        raise ValueError(f"side must be in {SIDE_RANGE}, got {side}")


def _compatible(
    x: float, y: float, w: float, other: tuple[float, float, float], gap: float, offset: float
) -> bool:
    ox, oy, ow = other
    dx, dy = abs(x - ox), abs(y - oy)
    if dx < offset or dy < offset:
        return False
    # Axis-aligned boxes are disjoint with a gap iff they are separated on at least one axis.
    reach = (w + ow) / 2 + gap
    return dx >= reach or dy >= reach


def _place(sides: Sequence[float], side: int, rng: random.Random) -> list[tuple[float, float]] | None:
    """Random centres obeying the spacing rules, or None when this attempt got stuck."""
    gap, offset = MIN_BOX_GAP * side, MIN_CENTRE_OFFSET * side
    centres: list[tuple[float, float]] = [(0.0, 0.0)] * len(sides)
    placed: list[tuple[float, float, float]] = []
    # Largest first: late large objects are what fails to fit, and a restart costs time.
    for i in sorted(range(len(sides)), key=lambda i: -sides[i]):
        w = sides[i]
        lo, hi = w / 2, side - w / 2
        for _ in range(_PLACEMENT_TRIES):
            x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
            if all(_compatible(x, y, w, other, gap, offset) for other in placed):
                break
        else:
            return None
        placed.append((x, y, w))
        centres[i] = (x, y)
    return centres


def sample_scene(
    rng: random.Random, side: int = 224, n_objects: int | None = None, small_share: float | None = None
) -> list[ShapeObject]:
    """Draw 1-6 objects (count uniform, or `n_objects`) with uniform shape, colour and size, validly placed.

    `small_share` (training only) draws each object small with that probability instead of the
    spec's even mix; None keeps the spec's draw (and the random stream of every seeded data set).
    """
    _check_side(side)
    if n_objects is not None and not OBJECT_COUNT_RANGE[0] <= n_objects <= OBJECT_COUNT_RANGE[1]:
        raise ValueError(f"n_objects must be in {OBJECT_COUNT_RANGE}, got {n_objects}")
    if small_share is not None and not 0 <= small_share <= 1:
        raise ValueError(f"small_share must be in [0, 1], got {small_share}")
    n = rng.randint(*OBJECT_COUNT_RANGE) if n_objects is None else n_objects

    def size() -> str:
        if small_share is None:
            return rng.choice(SIZES)
        return "small" if rng.random() < small_share else "large"

    while True:
        kinds = [(rng.choice(SHAPES), rng.choice(_COLOR_NAMES), size()) for _ in range(n)]
        sides = [rng.uniform(*SIZE_RANGES[size]) * side for _, _, size in kinds]
        # Re-place before re-drawing attributes, so crowded scenes keep the uniform size mix.
        for _ in range(_PLACEMENT_RESTARTS):
            centres = _place(sides, side, rng)
            if centres is not None:
                return [
                    ShapeObject(shape, color, size, x, y, w, side)
                    for (shape, color, size), (x, y), w in zip(kinds, centres, sides, strict=True)
                ]


# --------------------------------------------------------------------------- pixels


def _background(
    side: int, rgb: tuple[int, int, int], sigma: float, seed: int, shared_noise: bool = False
) -> Image.Image:
    """Flat colour plus Gaussian noise, drawn as uint16 indices into the normal quantile table.

    `shared_noise` draws one noise field for all three channels (grey noise) instead of one each;
    the spec allows both, so training sees both.
    """
    if sigma <= 0:
        return Image.new("RGB", (side, side), rgb)
    indices = np.random.default_rng(seed).integers(0, 65536, (1 if shared_noise else 3, side, side), dtype=np.uint16)
    bands = []
    for base, band in zip(rgb, np.broadcast_to(indices, (3, side, side)), strict=True):
        # +0.5: the uint8 cast truncates, so this rounds to the nearest grey level.
        lookup = np.clip(base + 0.5 + sigma * _NORMAL_QUANTILES, 0, 255.5).astype(np.uint8)
        bands.append(np.take(lookup, band))
    return Image.fromarray(np.stack(bands, axis=-1), "RGB")


def _mask(
    obj: ShapeObject, supersample: int = _SUPERSAMPLE, triangle_height: float = 1.0
) -> tuple[Image.Image, tuple[int, int]]:
    """Coverage mask of one object over its pixel-aligned box, and the box corner.

    Drawn `supersample` times larger and box-filtered down: 4 gives anti-aliased edges, 1 hard ones.
    A triangle's base spans the box; `triangle_height` < 1 (e.g. 0.87, equilateral) centres a
    shorter one in it, as another reading of "upright isosceles" within the box would.
    """
    half = obj.side / 2
    left, top = obj.cx - half, obj.cy - half
    x0, y0 = math.floor(left), math.floor(top)
    width, height = math.ceil(obj.cx + half) - x0, math.ceil(obj.cy + half) - y0
    ss = supersample
    mask = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(mask)
    # Sub-pixel offsets survive the supersampling; PIL boxes include their last pixel, hence -1.
    x1, y1 = (left - x0) * ss, (top - y0) * ss
    x2, y2 = x1 + obj.side * ss - 1, y1 + obj.side * ss - 1
    if obj.shape == "circle":
        draw.ellipse((x1, y1, x2, y2), fill=255)
    elif obj.shape == "square":
        draw.rectangle((x1, y1, x2, y2), fill=255)
    else:  # upright isosceles triangle, apex at the top centre of its height within the box
        pad = (y2 - y1) * (1 - triangle_height) / 2
        draw.polygon([((x1 + x2) / 2, y1 + pad), (x1, y2 - pad), (x2, y2 - pad)], fill=255)
    return mask.reduce(ss), (x0, y0)


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-COLOR_JITTER, COLOR_JITTER))) for c in rgb)
    return r, g, b


def render_scene(
    objects: Sequence[ShapeObject],
    rng: random.Random,
    side: int = 224,
    supersample: int = _SUPERSAMPLE,
    shared_noise: bool = False,
    triangle_height: float = 1.0,
    noise_over_objects: bool = False,
) -> Image.Image:
    """Draw the scene as an RGB image: noisy flat background, solid shapes without outline.

    `supersample`, `shared_noise`, `triangle_height` and `noise_over_objects` vary how, within the
    spec, the pixels are made (edge anti-aliasing, colour or grey noise, triangle proportions, the
    noise on the background only or over everything), so that training does not learn one
    renderer's pixels.
    """
    _check_side(side)
    rgb = (
        rng.randint(*BACKGROUND_RANGE),
        rng.randint(*BACKGROUND_RANGE),
        rng.randint(*BACKGROUND_RANGE),
    )
    sigma, noise_seed = rng.uniform(*NOISE_SIGMA_RANGE), rng.getrandbits(64)
    image = _background(side, rgb, 0.0 if noise_over_objects else sigma, noise_seed, shared_noise)
    for obj in objects:
        mask, corner = _mask(obj, supersample, triangle_height)
        image.paste(_jitter(COLORS[obj.color], rng), corner, mask)
    if noise_over_objects and sigma > 0:
        noise = np.random.default_rng(noise_seed).normal(0.0, sigma, (side, side, 1 if shared_noise else 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise + 0.5, 0, 255).astype(np.uint8), "RGB")
    return image


# --------------------------------------------------------------------------- questions

_YES_NO = ("yes", "no")
_RELATIONS: dict[str, Callable[[ShapeObject, ShapeObject], bool]] = {
    "to the left of": lambda a, b: a.cx < b.cx,
    "to the right of": lambda a, b: a.cx > b.cx,
    "above": lambda a, b: a.cy < b.cy,  # image rows grow downwards
    "below": lambda a, b: a.cy > b.cy,
}
# The spec's four descriptions; their texts never collide across kinds, so counting texts is
# enough to tell which descriptions pick out exactly one object.
_DESCRIPTIONS: tuple[Callable[[ShapeObject], str], ...] = (
    lambda o: f"{o.color} {o.shape}",
    lambda o: f"{o.size} {o.shape}",
    lambda o: f"{o.size} {o.color} {o.shape}",
    lambda o: f"{o.color} object",
)

Options = dict[str, list[Any]]  # answer -> the candidates (question texts) that have it


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _group(pairs: Iterable[tuple[str, Any]]) -> Options:
    options: Options = {}
    for answer, candidate in pairs:
        options.setdefault(answer, []).append(candidate)
    return options


def _unique(objects: Sequence[ShapeObject], key: Callable[[ShapeObject], Any]) -> dict[Any, ShapeObject]:
    counts = Counter(key(o) for o in objects)
    return {key(o): o for o in objects if counts[key(o)] == 1}


def _unique_descriptions(objects: Sequence[ShapeObject]) -> list[list[str]]:
    texts = [[describe(o) for describe in _DESCRIPTIONS] for o in objects]
    counts = Counter(text for row in texts for text in row)
    return [[text for text in row if counts[text] == 1] for row in texts]


def _count_all(objects: Sequence[ShapeObject]) -> Options:
    return {str(len(objects)): ["How many objects are there?"]}


def _count_shapes(objects: Sequence[ShapeObject]) -> Options:
    counts = Counter(o.shape for o in objects)
    return _group((str(counts[s]), f"How many {s}s are there?") for s in SHAPES)


def _count_colors(objects: Sequence[ShapeObject]) -> Options:
    counts = Counter(o.color for o in objects)
    return _group((str(counts[c]), f"How many {c} objects are there?") for c in _COLOR_NAMES)


def _count_color_shapes(objects: Sequence[ShapeObject]) -> Options:
    counts = Counter((o.color, o.shape) for o in objects)
    return _group(
        (str(counts[c, s]), f"How many {c} {s}s are there?") for c in _COLOR_NAMES for s in SHAPES
    )


def _exist_color_shape(objects: Sequence[ShapeObject]) -> Options:
    present = {(o.color, o.shape) for o in objects}
    return _group(
        (_yes_no((c, s) in present), f"Is there a {c} {s}?") for c in _COLOR_NAMES for s in SHAPES
    )


def _exist_size_color_shape(objects: Sequence[ShapeObject]) -> Options:
    present = {(o.size, o.color, o.shape) for o in objects}
    return _group(
        (_yes_no((z, c, s) in present), f"Is there a {z} {c} {s}?")
        for z in SIZES
        for c in _COLOR_NAMES
        for s in SHAPES
    )


def _query_color_by_size_shape(objects: Sequence[ShapeObject]) -> Options:
    found = _unique(objects, lambda o: (o.size, o.shape))
    return _group((o.color, f"What color is the {z} {s}?") for (z, s), o in found.items())


def _query_color_by_shape(objects: Sequence[ShapeObject]) -> Options:
    found = _unique(objects, lambda o: o.shape)
    return _group((o.color, f"What color is the {s}?") for s, o in found.items())


def _query_shape_by_color(objects: Sequence[ShapeObject]) -> Options:
    found = _unique(objects, lambda o: o.color)
    return _group((o.shape, f"What shape is the {c} object?") for c, o in found.items())


def _query_shape_by_size_color(objects: Sequence[ShapeObject]) -> Options:
    found = _unique(objects, lambda o: (o.size, o.color))
    return _group((o.shape, f"What shape is the {z} {c} object?") for (z, c), o in found.items())


def _query_size_by_color_shape(objects: Sequence[ShapeObject]) -> Options:
    found = _unique(objects, lambda o: (o.color, o.shape))
    return _group((o.size, f"What size is the {c} {s}?") for (c, s), o in found.items())


def _relation(objects: Sequence[ShapeObject]) -> Options:
    # Candidates keep every unique description of both objects; one is picked when realised,
    # which keeps enumeration cheap (up to 30 pairs x 4 relations instead of x 16 wordings).
    named = [(o, d) for o, d in zip(objects, _unique_descriptions(objects), strict=True) if d]
    return _group(
        (_yes_no(holds(a, b)), (da, relation, db))
        for i, (a, da) in enumerate(named)
        for j, (b, db) in enumerate(named)
        if i != j
        for relation, holds in _RELATIONS.items()
    )


def _realise_relation(candidate: tuple[list[str], str, list[str]], rng: random.Random) -> str:
    first, relation, second = candidate
    return f"Is the {rng.choice(first)} {relation} the {rng.choice(second)}?"


_ROWS, _COLUMNS = ("top", "", "bottom"), ("left", "", "right")


def _cell_name(row: int, col: int) -> str:
    """A cell of the image in thirds: "top left", "top", ..., "center", ..."""
    return f"{_ROWS[row]} {_COLUMNS[col]}".strip() or "center"


def _place_name(o: ShapeObject) -> str:
    """The cell of the object's centre."""
    return _cell_name(min(2, int(3 * o.cy / o.image_side)), min(2, int(3 * o.cx / o.image_side)))


def _where(objects: Sequence[ShapeObject]) -> Options:
    return _group(
        (_place_name(o), f"Where is the {d}?")
        for o, descriptions in zip(objects, _unique_descriptions(objects), strict=True)
        for d in descriptions
    )


def _compare_colors(objects: Sequence[ShapeObject]) -> Options:
    counts = Counter(o.color for o in objects)
    return _group(
        (_yes_no(counts[a] > counts[b]), f"Are there more {a} objects than {b} objects?")
        for a in _COLOR_NAMES
        for b in _COLOR_NAMES
        if a != b
    )


def _compare_shapes(objects: Sequence[ShapeObject]) -> Options:
    counts = Counter(o.shape for o in objects)
    return _group(
        (_yes_no(counts[a] > counts[b]), f"Are there more {a}s than {b}s?")
        for a in SHAPES
        for b in SHAPES
        if a != b
    )


def describe_sentence(objects: Sequence[ShapeObject]) -> str:
    """The describe answer: "There are 2 objects: a small red circle and a large blue square."

    Objects by the x of their centres, each named on its own even when two are alike.
    """
    n = len(objects)
    head = "There is 1 object: " if n == 1 else f"There are {n} objects: "
    return head + describe_objects(objects) + "."


def _describe(objects: Sequence[ShapeObject]) -> Options:
    sentence = describe_sentence(objects)
    return {"*": [(sentence, question) for question in DESCRIBE_QUESTIONS]}


def _as_text(candidate: Any, rng: random.Random) -> str:
    return candidate


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, cheap as a dict key
class _Template:
    """One question template: its family, the answers it aims for, and its askable questions."""

    family: str
    answers: tuple[str, ...]
    options: Callable[[Sequence[ShapeObject]], Options]
    realise: Callable[[Any, random.Random], str] = _as_text
    # Where the answer depends on the whole scene (describe): read from the candidate, not the target.
    answer_of: Callable[[Any], str] | None = None


def _numbers(lo: int, hi: int) -> tuple[str, ...]:
    return tuple(str(k) for k in range(lo, hi + 1))


# Count targets stop where a scene rarely has that many (e.g. 3 red circles): a target that almost
# no scene can host would wait forever in the sampler's queue. Together they still cover 0-6.
_TEMPLATES: tuple[_Template, ...] = (
    _Template("count", _numbers(1, 6), _count_all),
    _Template("count", _numbers(0, 4), _count_shapes),
    _Template("count", _numbers(0, 3), _count_colors),
    _Template("count", _numbers(0, 2), _count_color_shapes),
    _Template("exist", _YES_NO, _exist_color_shape),
    _Template("exist", _YES_NO, _exist_size_color_shape),
    _Template("query_color", _COLOR_NAMES, _query_color_by_size_shape),
    _Template("query_color", _COLOR_NAMES, _query_color_by_shape),
    _Template("query_shape", SHAPES, _query_shape_by_color),
    _Template("query_shape", SHAPES, _query_shape_by_size_color),
    _Template("query_size", SIZES, _query_size_by_color_shape),
    _Template("relation", _YES_NO, _relation, _realise_relation),
    _Template("compare", _YES_NO, _compare_colors),
    _Template("compare", _YES_NO, _compare_shapes),
    _Template("where", tuple(_cell_name(r, c) for r in range(3) for c in range(3)), _where),
    _Template("describe", ("*",), _describe, lambda c, rng: c[1], lambda c: c[0]),
)
ALL_FAMILIES: tuple[str, ...] = FAMILIES + V2_FAMILIES + EXTRA_FAMILIES
_BY_FAMILY: dict[str, tuple[_Template, ...]] = {
    family: tuple(t for t in _TEMPLATES if t.family == family) for family in ALL_FAMILIES
}


def _check_families(families: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(families)
    unknown = [f for f in chosen if f not in _BY_FAMILY]
    if unknown or not chosen:
        raise ValueError(f"families must be a non-empty subset of {ALL_FAMILIES}, got {chosen}")
    return chosen


def weight_list(weights: dict[Any, float], keys: Sequence[Any], name: str, none_left: str) -> list[float]:
    """{key: weight} -> one weight per key, in `keys` order (1 where not named), checked: every key
    known, no weight negative, not all 0 (`none_left` says what that would leave)."""
    unknown = set(weights) - set(keys)
    if unknown:
        raise ValueError(f"{name} must be in {', '.join(map(str, keys))}; got {sorted(unknown, key=str)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"{name} must not be negative: {weights}")
    values = [weights.get(k, 1.0) for k in keys]
    if not any(values):
        raise ValueError(f"{name} {none_left}: {weights}")
    return values


def family_weight_list(
    family_weights: dict[str, float] | None, families: Sequence[str] = FAMILIES
) -> list[float] | None:
    """{"relation": 3} -> one weight per family, in `families` order (1 where not named)."""
    if not family_weights:
        return None
    return weight_list(family_weights, families, "family_weights", "leave no family to ask")


def _question(template: _Template, answer: str, text: str) -> dict[str, str]:
    return {
        "question": text,
        "answer": answer,
        "question_type": template.family,
        "answer_type": ANSWER_TYPES[template.family],
    }


def sample_question(
    objects: Sequence[ShapeObject], rng: random.Random, family: str | None = None
) -> dict[str, str] | None:
    """One question about this scene, or None if `family` cannot be asked about it.

    `family=None` picks uniformly among the families askable here (all but `relation` always are).
    Within the family a template is picked uniformly, then an answer uniformly among the answers
    this scene allows: the best balance one scene permits. Data sets should use `QuestionSampler`,
    which balances answers over many scenes exactly.
    """
    families = FAMILIES if family is None else _check_families([family])
    askable: dict[str, list[tuple[_Template, Options]]] = {}
    for name in families:
        found = [(t, opts) for t in _BY_FAMILY[name] if (opts := t.options(objects))]
        if found:
            askable[name] = found
    if not askable:
        return None
    template, options = rng.choice(askable[rng.choice(list(askable))])
    answer = rng.choice(sorted(options))
    candidate = rng.choice(options[answer])
    answer = template.answer_of(candidate) if template.answer_of else answer
    return _question(template, answer, template.realise(candidate, rng))


class QuestionSampler:
    """Answer-balanced questions over a run of scenes, by target-first rejection with deferral.

    Each question starts as a target: a family (uniform, or round-robin for even data sets), a
    template (uniform) and an answer (uniform over the template's targets). A target the current
    scene cannot host is not thrown away but queued and offered first to each later scene. So every
    target is eventually asked, answers follow the uniform targets within each template, and (as
    the wording is symmetric in colours, shapes and sizes) a model that ignores the image scores
    near chance. No scene is rejected, so scenes keep the spec's distribution. Not thread-safe:
    keep one per data-loader worker.
    """

    def __init__(
        self,
        families: Sequence[str] | None = None,
        *,
        round_robin: bool = False,
        family_weights: dict[str, float] | None = None,
    ) -> None:
        self.families = FAMILIES if families is None else _check_families(families)
        if families is None and family_weights:  # v2 and training-only families join when weighted
            self.families += tuple(f for f in V2_FAMILIES + EXTRA_FAMILIES if f in family_weights)
        self.round_robin = round_robin
        # Training may ask the hard families more often; answers stay balanced within each family.
        self.weights = family_weight_list(family_weights, self.families)
        if self.weights:  # a family weighted 0 is never asked, so it must not count as hostable
            kept = [(f, w) for f, w in zip(self.families, self.weights) if w > 0]
            self.families, self.weights = tuple(f for f, _ in kept), [w for _, w in kept]
        self._templates = [t for family in self.families for t in _BY_FAMILY[family]]
        self._pending: list[tuple[_Template, str]] = []
        self._drawn = 0

    @property
    def pending(self) -> int:
        """Targets drawn but not yet hosted by any scene."""
        return len(self._pending)

    def _draw(self, rng: random.Random) -> tuple[_Template, str]:
        if self.round_robin:
            family = self.families[self._drawn % len(self.families)]
        elif self.weights:
            family = rng.choices(self.families, self.weights)[0]
        else:
            family = rng.choice(self.families)
        self._drawn += 1
        template = rng.choice(_BY_FAMILY[family])
        return template, rng.choice(template.answers)

    def questions(
        self, objects: Sequence[ShapeObject], rng: random.Random, k: int = 1
    ) -> list[dict[str, str]]:
        """Up to `k` distinct questions about this scene; fewer (even none) only when the scene
        cannot host more of the sampler's families (e.g. `relation` about a lone object)."""
        # Each target's unused candidates for this scene, built on first use (enumerating every
        # template costs more than the rest of the sampling). A target's candidates are distinct
        # questions, so removing the asked ones never repeats a question.
        remaining: dict[tuple[_Template, str], list[Any]] = {}

        def candidates(target: tuple[_Template, str]) -> list[Any]:
            if target not in remaining:
                template = target[0]
                options = template.options(objects)
                for answer in template.answers:
                    remaining[template, answer] = list(options.get(answer, ()))
            return remaining[target]

        def host(target: tuple[_Template, str]) -> dict[str, str] | None:
            found = candidates(target)
            if not found:
                return None
            # Swap a random candidate to the end and pop it: uniform, and no full shuffles.
            i = rng.randrange(len(found))
            found[i], found[-1] = found[-1], found[i]
            template, answer = target
            candidate = found.pop()
            answer = template.answer_of(candidate) if template.answer_of else answer
            return _question(template, answer, template.realise(candidate, rng))

        def hostable() -> bool:
            return any(candidates((t, a)) for t in self._templates for a in t.answers)

        out: list[dict[str, str]] = []
        i = 0
        while len(out) < k and i < len(self._pending):
            question = host(self._pending[i])
            if question is None:
                i += 1
            else:
                out.append(question)
                del self._pending[i]
        misses = 0
        while len(out) < k:
            target = self._draw(rng)
            question = host(target)
            if question is not None:
                out.append(question)
                continue
            self._pending.append(target)
            misses += 1
            # A scene that can host nothing (more) of these families must not flood the queue.
            if misses % 8 == 0 and not hostable():
                break
        return out


# --------------------------------------------------------------------------- captions


def caption(objects: Sequence[ShapeObject], rng: random.Random) -> str:
    """A short true caption, e.g. "a small red circle left of a large blue square"."""
    if len(objects) == 1:
        return objects[0].phrase()
    a, b = rng.sample(list(objects), 2)
    relation = rng.choice(
        ["left of" if a.cx < b.cx else "right of", "above" if a.cy < b.cy else "below"]
    )
    return f"{a.phrase()} {relation} {b.phrase()}"


def describe_objects(objects: Sequence[ShapeObject]) -> str:
    """All objects from left to right, e.g. "a small red circle and a large blue square"."""
    phrases = [o.phrase() for o in sorted(objects, key=lambda o: o.cx)]
    if not phrases:
        return "no objects"
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# --------------------------------------------------------------------------- files


def write_dataset(
    out_dir: str | Path,
    n_images: int,
    seed: int,
    side: int = 224,
    questions_per_image: int = 5,
    families: Sequence[str] | None = None,
    phrasing: str = "v1",
) -> None:
    """Write a fixed ShapesVQA set in the VQA v2 layout, plus `captions.json`.

    Question ids are `image_id * 1000 + j`; families (the spec's seven unless `families` names
    some, e.g. "describe" or the training-only "where") are drawn round-robin so they are even.
    `phrasing="v2"` asks each question in a random form of the spec's version 2 table (letter
    case, "colour", the final "?" and spaces varied too); "v1" keeps the exact templates.
    """
    if phrasing not in ("v1", "v2"):
        raise ValueError(f"phrasing must be v1 or v2, got {phrasing!r}")
    # Imported here: the phrasing module builds on this one.
    from .phrasing import rephrase

    _check_side(side)
    if not 1 <= questions_per_image < 1000:
        raise ValueError(f"questions_per_image must be in [1, 999], got {questions_per_image}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sampler = QuestionSampler(families, round_robin=True)
    questions: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    for image_id in range(n_images):
        objects = sample_scene(rng, side)
        asked = sampler.questions(objects, rng, questions_per_image)
        # compress_level=1: the noisy backgrounds barely compress, so higher levels only cost time.
        render_scene(objects, rng, side).save(out / "images" / f"{image_id}.png", compress_level=1)
        captions.append({"image_id": image_id, "caption": caption(objects, rng)})
        for j, q in enumerate(asked):
            question_id = image_id * 1000 + j
            text = rephrase(q["question"], rng) if phrasing == "v2" else q["question"]
            questions.append({"image_id": image_id, "question_id": question_id, "question": text})
            annotations.append(
                {
                    "image_id": image_id,
                    "question_id": question_id,
                    "question_type": q["question_type"],
                    "answer_type": q["answer_type"],
                    "multiple_choice_answer": q["answer"],
                    "answers": [{"answer": q["answer"], "answer_id": i} for i in range(1, 11)],
                }
            )
    for name, key, rows in (
        ("questions.json", "questions", questions),
        ("annotations.json", "annotations", annotations),
        ("captions.json", "captions", captions),
    ):
        (out / name).write_text(json.dumps({key: rows}))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: write a ShapesVQA set to disk."""
    parser = argparse.ArgumentParser(
        prog="python -m mmchat shapes", description="Write a ShapesVQA data set (VQA v2 layout)."
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--side", type=int, default=224, help=f"image side in {SIDE_RANGE}")
    parser.add_argument("--questions-per-image", type=int, default=5)
    parser.add_argument(
        "--families", nargs="*", help=f"default: all of {', '.join(FAMILIES)}; also {', '.join(V2_FAMILIES + EXTRA_FAMILIES)}"
    )
    parser.add_argument("--phrasing", choices=("v1", "v2"), default="v1", help="v2: the spec's version 2 forms")
    args = parser.parse_args(argv)
    write_dataset(
        args.out, args.images, args.seed, args.side, args.questions_per_image, args.families or None, args.phrasing
    )
    print(f"wrote {args.images} images x {args.questions_per_image} questions to {args.out}")


if __name__ == "__main__":
    main()
