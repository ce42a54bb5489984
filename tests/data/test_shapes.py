"""ShapesVQA renderer: scene rules, pixels, question templates, answers, balance and file output.

Answers are checked against an oracle written here from the spec's wording (regexes over the
question text), not against the renderer's own question code.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import runpy
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmchat.data import shapes
from mmchat.training.conversations import ShapesConversations
from mmchat.data.shapes import (
    COLORS,
    FAMILIES,
    SHAPES,
    SIZES,
    QuestionSampler,
    ShapeObject,
    caption,
    describe_objects,
    render_scene,
    sample_question,
    sample_scene,
    write_dataset,
)
from mmchat.data.vqa import load_vqa

C = "(?:red|green|blue|yellow|purple|orange)"
S = "(?:circle|square|triangle)"
Z = "(?:small|large)"
D = f"(?:{C} {S}|{Z} {S}|{Z} {C} {S}|{C} object)"
TEMPLATES = {  # the spec's table, one regex per template
    "count": [
        r"How many objects are there\?",
        rf"How many {S}s are there\?",
        rf"How many {C} objects are there\?",
        rf"How many {C} {S}s are there\?",
    ],
    "exist": [rf"Is there a {C} {S}\?", rf"Is there a {Z} {C} {S}\?"],
    "query_color": [rf"What color is the {Z} {S}\?", rf"What color is the {S}\?"],
    "query_shape": [rf"What shape is the {C} object\?", rf"What shape is the {Z} {C} object\?"],
    "query_size": [rf"What size is the {C} {S}\?"],
    "relation": [rf"Is the {D} (?:to the left of|to the right of|above|below) the {D}\?"],
    "compare": [rf"Are there more {C} objects than {C} objects\?", rf"Are there more {S}s than {S}s\?"],
}


# ----------------------------------------------------------------------------- oracle


def _matches(description: str, obj: ShapeObject) -> bool:
    # Every word but "object" names one of the object's attributes.
    return all(w in (obj.size, obj.color, obj.shape) for w in description.split() if w != "object")


def _the(description: str, objects: list[ShapeObject]) -> ShapeObject:
    found = [o for o in objects if _matches(description, o)]
    assert len(found) == 1, f"'the {description}' matches {len(found)} objects"
    return found[0]


def oracle(question: str, objects: list[ShapeObject]) -> str:
    """The true answer, computed from the question text and the objects."""
    yes_no = {True: "yes", False: "no"}
    if question == "How many objects are there?":
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o.color == m[1] for o in objects))
    if m := re.fullmatch(r"How many (\w+ )?(\w+)s are there\?", question):
        return str(sum(_matches(f"{m[1] or ''}{m[2]}", o) for o in objects))
    if m := re.fullmatch(r"Is there a (.+)\?", question):
        return yes_no[any(_matches(m[1], o) for o in objects)]
    if m := re.fullmatch(r"What (color|shape|size) is the (.+)\?", question):
        return getattr(_the(m[2], objects), m[1])
    if m := re.fullmatch(r"Is the (.+?) (to the left of|to the right of|above|below) the (.+)\?", question):
        a, b = _the(m[1], objects), _the(m[3], objects)
        holds = {
            "to the left of": a.cx < b.cx,
            "to the right of": a.cx > b.cx,
            "above": a.cy < b.cy,
            "below": a.cy > b.cy,
        }
        return yes_no[holds[m[2]]]
    if m := re.fullmatch(r"Are there more (\w+) objects than (\w+) objects\?", question):
        count = Counter(o.color for o in objects)
        return yes_no[count[m[1]] > count[m[2]]]
    if m := re.fullmatch(r"Are there more (\w+)s than (\w+)s\?", question):
        count = Counter(o.shape for o in objects)
        return yes_no[count[m[1]] > count[m[2]]]
    raise AssertionError(f"question matches no template: {question!r}")


def _balanced(n_scenes: int, seed: int, family: str | None = None, k: int = 1):
    """(objects, question) pairs from a QuestionSampler over fresh scenes."""
    rng = random.Random(seed)
    sampler = QuestionSampler(None if family is None else [family])
    for _ in range(n_scenes):
        objects = sample_scene(rng)
        for q in sampler.questions(objects, rng, k):
            yield objects, q


# ----------------------------------------------------------------------------- scenes


@pytest.mark.parametrize("side", [96, 224, 512])
def test_scene_geometry_follows_the_spec(side: int) -> None:
    rng = random.Random(side)
    counts = Counter()
    for _ in range(400):
        objects = sample_scene(rng, side)
        counts[len(objects)] += 1
        assert 1 <= len(objects) <= 6
        for o in objects:
            assert (o.shape, o.color, o.size) in itertools.product(SHAPES, COLORS, SIZES)
            lo, hi = (0.12, 0.16) if o.size == "small" else (0.24, 0.30)
            assert lo * side <= o.side <= hi * side
            assert o.side / 2 <= o.cx <= side - o.side / 2
            assert o.side / 2 <= o.cy <= side - o.side / 2
        for a, b in itertools.combinations(objects, 2):
            dx, dy = abs(a.cx - b.cx), abs(a.cy - b.cy)
            assert dx >= 0.05 * side and dy >= 0.05 * side, "centres too close on an axis"
            # Gap between the boxes along the axis that separates them best.
            gap = max(dx, dy) - (a.side + b.side) / 2
            assert gap >= 0.02 * side - 1e-9, "boxes overlap or are closer than 2 %"
    assert set(counts) == set(range(1, 7))
    assert min(counts.values()) > 400 / 6 * 0.6, counts  # count drawn uniformly


def test_scene_attributes_are_uniform() -> None:
    rng = random.Random(0)
    objects = [o for _ in range(1500) for o in sample_scene(rng)]
    for attr, values in (("shape", SHAPES), ("color", COLORS), ("size", SIZES)):
        shares = Counter(getattr(o, attr) for o in objects)
        for value in values:
            assert abs(shares[value] / len(objects) - 1 / len(values)) < 0.03, (attr, shares)


def test_training_can_draw_crowded_scenes_more_often() -> None:
    """--object-weights: counting errs most in crowded scenes, so training may draw them more often."""
    stream = iter(ShapesConversations(seed=0, side_range=(96, 96), object_weights={1: 0, 2: 0, 3: 0, 4: 0, 6: 3}))
    counts = Counter(len(next(stream).objects) for _ in range(200))
    assert set(counts) == {5, 6} and 0.65 < counts[6] / 200 < 0.85, counts
    with pytest.raises(ValueError, match="object counts must be in"):
        ShapesConversations(seed=0, object_weights={7: 1.0})
    with pytest.raises(ValueError, match="all 0"):
        ShapesConversations(seed=0, object_weights=dict.fromkeys(range(1, 7), 0.0))
    with pytest.raises(ValueError, match="n_objects"):
        sample_scene(random.Random(0), 224, n_objects=0)


@pytest.mark.parametrize("side", [95, 513])
def test_sides_outside_96_512_are_refused(side: int) -> None:
    with pytest.raises(ValueError):
        sample_scene(random.Random(0), side)


# ----------------------------------------------------------------------------- pixels


def _is_colour(pixel: np.ndarray, name: str) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - COLORS[name]) <= 15))


def _is_background(pixel: np.ndarray) -> bool:
    # Backgrounds are >= 200 per channel (noise aside); every object colour has a channel <= 75.
    return int(pixel.min()) > 150


@pytest.mark.parametrize("side", [96, 224, 512])
def test_object_centres_have_the_named_colour(side: int) -> None:
    rng = random.Random(side + 1)
    for _ in range(30):
        objects = sample_scene(rng, side)
        image = render_scene(objects, rng, side)
        assert image.mode == "RGB" and image.size == (side, side)
        pixels = np.asarray(image)
        for o in objects:
            assert _is_colour(pixels[int(o.cy), int(o.cx)], o.color), (o, pixels[int(o.cy), int(o.cx)])


# The ways of drawing that training mixes: anti-aliased or hard edges, colour or grey noise.
RENDER_VARIANTS = [{}, {"supersample": 1}, {"supersample": 2, "shared_noise": True}]


def test_equilateral_triangles_sit_centred_in_their_box() -> None:
    """triangle_height=0.87: the same base, a shorter triangle, its apex and base pulled in."""
    obj = ShapeObject("triangle", "red", "large", 112.0, 112.0, 64.0, 224)
    rows = {}
    for height in (1.0, 0.87):
        pixels = np.asarray(render_scene([obj], random.Random(0), 224, triangle_height=height))
        red = np.abs(pixels.astype(int) - COLORS["red"]).max(axis=-1) <= 30
        ys = np.nonzero(red[:, 112])[0]
        rows[height] = (ys.min(), ys.max())
    # The box spans rows 80-143; 0.87 leaves about 4 rows empty above and below (the apex's
    # first, faint anti-aliased row falls under the colour threshold).
    assert rows[1.0][0] <= 82 and rows[1.0][1] == 143, rows
    assert rows[0.87][0] >= 85 and rows[0.87][1] <= 139, rows


def test_noise_can_cover_the_objects_at_the_same_strength() -> None:
    """noise_over_objects: the objects are noisy too, and the background no noisier than before."""
    obj = ShapeObject("square", "blue", "large", 112.0, 112.0, 64.0, 224)
    spread = {}
    for over in (False, True):
        rng = random.Random(5)  # draws noise sigma 2.9
        pixels = np.asarray(render_scene([obj], rng, 224, noise_over_objects=over)).astype(float)
        spread[over] = (pixels[90:134, 90:134].std(axis=(0, 1)).max(), pixels[:60, :60].std(axis=(0, 1)).max())
    assert spread[False][0] == 0 and spread[True][0] > 1, spread
    assert abs(spread[True][1] - spread[False][1]) < 0.3 * spread[False][1], spread


def test_more_variety_draws_small_sides_more_often() -> None:
    """A third of the scenes at 96-160 px, against an eighth when sides are uniform over 96-512."""
    stream = iter(ShapesConversations(seed=0, more_variety=True))
    small = sum(next(stream).image.size[0] <= 160 for _ in range(150)) / 150
    assert 0.3 < small < 0.6, small


def test_training_can_draw_more_small_renders_and_small_objects() -> None:
    """--small-sides 0.8 puts most scenes at 96-160 px; --small-objects 0.8 makes most objects small."""
    stream = iter(ShapesConversations(seed=0, more_variety=True, small_sides=0.8, small_objects=0.8))
    convs = [next(stream) for _ in range(150)]
    small_renders = sum(c.image.size[0] <= 160 for c in convs) / len(convs)
    objects = [o for c in convs for o in c.objects]
    small_objects = sum(o.size == "small" for o in objects) / len(objects)
    assert 0.7 < small_renders < 0.9, small_renders
    assert 0.72 < small_objects < 0.88, small_objects


def test_training_can_draw_scenes_at_the_models_own_input_side() -> None:
    """--native-sides 0.5 draws half the scenes at exactly the ViT's side (unresampled); off, the
    stream is what it was, so earlier stages' seeds replay the same conversations."""
    stream = iter(ShapesConversations(seed=0, native_side=96, native_sides=0.5))
    native = [next(stream).image.size[0] for _ in range(200)]
    assert 0.4 < native.count(96) / len(native) < 0.6, native.count(96)
    plain, off = iter(ShapesConversations(seed=3)), iter(ShapesConversations(seed=3, native_side=96, native_sides=0.0))
    for _ in range(20):
        a, b = next(plain), next(off)
        assert a.image.size == b.image.size and a.turns == b.turns
    assert sum(next(plain).image.size[0] == 96 for _ in range(200)) < 10


def test_the_spec_draw_of_sizes_is_even_and_unchanged_by_default() -> None:
    """Without small_share a seeded scene is what it always was (data sets are rebuilt from seeds)."""
    before = ["llls", "ll", "l", "sl", "ls", "lssll", "lslll", "sss"]  # seeds 0-7, before small_share existed
    assert ["".join(o.size[0] for o in sample_scene(random.Random(s), 224)) for s in range(8)] == before
    spec = [sample_scene(random.Random(s), 224) for s in range(300)]
    sizes = [o.size for scene in spec for o in scene]
    assert 0.44 < sizes.count("small") / len(sizes) < 0.56
    with pytest.raises(ValueError, match="small_share"):
        sample_scene(random.Random(0), 224, small_share=1.5)


@pytest.mark.parametrize("variant", RENDER_VARIANTS)
def test_shapes_are_drawn_as_specified(variant: dict) -> None:
    """Circles leave box corners empty, squares fill them, triangles stand apex up."""
    rng = random.Random(7)
    seen = set()
    for _ in range(40):
        objects = sample_scene(rng, 224)
        pixels = np.asarray(render_scene(objects, rng, 224, **variant))
        for o in objects:
            h = o.side / 2
            x0, y0, x1, y1 = o.cx - h + 3, o.cy - h + 3, o.cx + h - 3, o.cy + h - 3

            inside = {"circle": [(o.cx, y0), (o.cx, y1), (x0, o.cy), (x1, o.cy)],
                      "square": [(x0, y0), (x1, y0), (x0, y1), (x1, y1)],
                      "triangle": [(o.cx, o.cy - h / 2), (x0, y1), (x1, y1), (o.cx, y1)]}
            outside = {"circle": [(x0, y0), (x1, y0), (x0, y1), (x1, y1)],
                       "square": [],
                       "triangle": [(x0, y0), (x1, y0), (x0, o.cy - h / 2)]}  # fmt: skip
            assert all(_is_colour(pixels[int(y), int(x)], o.color) for x, y in inside[o.shape]), o
            assert all(_is_background(pixels[int(y), int(x)]) for x, y in outside[o.shape]), o
            seen.add(o.shape)
    assert seen == set(SHAPES)


def test_background_is_light_flat_colour_with_bounded_noise() -> None:
    rng = random.Random(3)
    sigmas = []
    for _ in range(30):
        objects = sample_scene(rng, 224)
        pixels = np.asarray(render_scene(objects, rng, 224)).astype(float)
        free = np.ones((224, 224), bool)
        for o in objects:
            h = o.side / 2 + 1
            free[max(0, int(o.cy - h)) : int(o.cy + h) + 1, max(0, int(o.cx - h)) : int(o.cx + h) + 1] = False
        background = pixels[free]
        assert np.all((background.mean(0) > 198) & (background.mean(0) < 256))
        sigmas.append(background.std(0).max())
    assert max(sigmas) < 8.5  # sigma <= 8, clipping at 255 only lowers it
    assert min(sigmas) < 2 and max(sigmas) > 5  # sigma is drawn from [0, 8], not fixed


def test_hard_edges_and_grey_noise_variants() -> None:
    """supersample=1 leaves no blended edge pixels; shared noise moves all channels together."""
    objects = [ShapeObject("circle", "blue", "large", 112.3, 100.7, 60.0)]
    soft = np.asarray(render_scene(objects, random.Random(1), 224)).astype(int)
    hard = np.asarray(render_scene(objects, random.Random(1), 224, supersample=1)).astype(int)

    def blended(pixels: np.ndarray) -> int:  # neither background (all >= 150) nor blue (blue > 150, red < 120)
        return int(np.sum((pixels.min(-1) < 150) & ~((pixels[..., 2] > 150) & (pixels[..., 0] < 120))))

    assert blended(hard) == 0 and blended(soft) > 20
    spreads = {}
    for shared in (True, False):  # a background alone, the same colour and noise level both ways
        pixels = np.asarray(render_scene([], random.Random(4), 224, shared_noise=shared)).astype(int)
        unclipped = pixels.max(-1) < 255
        # Shared noise shifts every channel alike, so the difference of two channels is constant.
        spreads[shared] = np.ptp((pixels[..., 0] - pixels[..., 1])[unclipped])
    assert spreads[True] == 0 and spreads[False] > 10


def test_rendering_is_reproducible() -> None:
    objects = sample_scene(random.Random(1))
    a = np.asarray(render_scene(objects, random.Random(2)))
    b = np.asarray(render_scene(objects, random.Random(2)))
    c = np.asarray(render_scene(objects, random.Random(3)))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ----------------------------------------------------------------------------- questions


def test_every_template_of_every_family_is_produced() -> None:
    hits = Counter()
    questions = [q for _, q in _balanced(1500, seed=11)]
    rng = random.Random(12)
    for _ in range(300):
        q = sample_question(sample_scene(rng), rng)
        questions += [q] if q is not None else []
    for q in questions:
        matched = [(family, t) for family, ts in TEMPLATES.items() for t in ts if re.fullmatch(t, q["question"])]
        assert len(matched) == 1, q
        family, template = matched[0]
        assert q["question_type"] == family
        expected_type = {"count": "number", "exist": "yes/no", "relation": "yes/no", "compare": "yes/no"}
        assert q["answer_type"] == expected_type.get(family, "other")
        hits[template] += 1
    assert set(hits) == {t for ts in TEMPLATES.values() for t in ts}
    relations = Counter(re.search(r"to the left of|to the right of|above|below", q["question"])[0]
                        for q in questions if q["question_type"] == "relation")  # fmt: skip
    assert len(relations) == 4


def test_answers_match_the_scene_and_the_questions_are_unambiguous() -> None:
    # The oracle asserts that every "the ..." description picks out exactly one object.
    n = 0
    for objects, q in _balanced(800, seed=5, k=4):
        assert oracle(q["question"], objects) == q["answer"], q
        n += 1
    rng = random.Random(6)
    for _ in range(500):
        objects = sample_scene(rng, 160)
        for family in FAMILIES:
            q = sample_question(objects, rng, family)
            if q is not None:
                assert q["question_type"] == family
                assert oracle(q["question"], objects) == q["answer"], q
                n += 1
    assert n > 5000


def test_relation_is_only_asked_when_two_objects_can_be_named() -> None:
    one = [ShapeObject("circle", "red", "small", 50, 50, 30)]
    assert sample_question(one, random.Random(0), "relation") is None
    q = sample_question(one, random.Random(0))
    assert q is not None and q["question_type"] != "relation"
    twins = [ShapeObject("circle", "red", "small", 50, 50, 30), ShapeObject("circle", "red", "small", 150, 150, 30)]
    assert sample_question(twins, random.Random(0), "relation") is None
    with pytest.raises(ValueError):
        sample_question(one, random.Random(0), "colour")


def test_where_names_the_cell_of_the_image_an_object_lies_in() -> None:
    objects = [
        ShapeObject("circle", "red", "small", 30, 40, 30, image_side=224),
        ShapeObject("square", "blue", "large", 112, 112, 60, image_side=224),
        ShapeObject("triangle", "green", "small", 200, 110, 30, image_side=224),
        ShapeObject("circle", "green", "large", 310, 450, 100, image_side=480),
    ]
    answers = {q: a for a, qs in shapes._where(objects).items() for q in qs}
    assert answers["Where is the red object?"] == "top left"
    assert answers["Where is the blue square?"] == "center"
    assert answers["Where is the green triangle?"] == "right"
    assert answers["Where is the large green circle?"] == "bottom"
    assert "Where is the green object?" not in answers  # two green objects: "the" would be ambiguous


def test_where_is_for_training_only_and_asked_only_when_weighted() -> None:
    rng = random.Random(3)
    plain = QuestionSampler()
    assert all(q["question_type"] != "where" for _ in range(300) for q in plain.questions(sample_scene(rng), rng, 3))
    sampler = QuestionSampler(family_weights={"where": 3.0})
    questions = [q for _ in range(600) for q in sampler.questions(sample_scene(rng), rng, 2)]
    where = _shares(questions, "where")
    assert len(where) == 9 and max(where.values()) < 0.2  # nine cells, none dominating
    with pytest.raises(ValueError):
        sample_question(sample_scene(rng), rng, "colour")


def test_a_data_set_of_where_questions_can_be_written_to_measure_them(tmp_path: Path) -> None:
    write_dataset(tmp_path, n_images=12, seed=4, side=96, questions_per_image=2, families=["where"])
    annotations = json.loads((tmp_path / "annotations.json").read_text())["annotations"]
    assert len(annotations) == 24 and {a["question_type"] for a in annotations} == {"where"}
    assert all(a["answer_type"] == "other" for a in annotations)


def _shares(questions, family: str) -> Counter:
    answers = Counter(q["answer"] for q in questions if q["question_type"] == family)
    total = sum(answers.values())
    return Counter({a: n / total for a, n in answers.items()})


@pytest.mark.parametrize("family", FAMILIES)
def test_question_sampler_balances_answers(family: str) -> None:
    questions = [q for _, q in _balanced(2000, seed=21, family=family)]
    shares = _shares(questions, family)
    if family in ("exist", "relation", "compare"):
        assert 0.45 <= shares["yes"] <= 0.55, shares
    elif family == "count":
        assert set(shares) == {str(k) for k in range(7)}, shares
        # Per template the targets are uniform (1-6 objects, 0-4 per shape, 0-3 per colour,
        # 0-2 per colour and shape), which puts 0 at 20 % and 1 or 2 at 24 % each.
        assert shares["0"] < 0.23 and max(shares.values()) < 0.28, shares
    else:
        values = {"query_color": COLORS, "query_shape": SHAPES, "query_size": SIZES}[family]
        assert set(shares) == set(values)
        assert all(abs(s - 1 / len(values)) < 0.3 / len(values) for s in shares.values()), shares


def test_question_wording_does_not_give_yes_no_answers_away() -> None:
    """A blind model learns from words; no single word may predict yes or no."""
    by_word: dict[str, Counter] = {}
    for _, q in _balanced(6000, seed=8):
        if q["answer_type"] == "yes/no":
            for word in set(re.findall(r"\w+", q["question"])):
                by_word.setdefault(f"{q['question_type']}:{word}", Counter())[q["answer"]] += 1
    for key, answers in by_word.items():
        n = answers["yes"] + answers["no"]
        if n >= 200:
            assert 0.38 <= answers["yes"] / n <= 0.62, (key, answers)


def test_question_sampler_defers_rather_than_drops_targets() -> None:
    rng = random.Random(4)
    sampler = QuestionSampler(round_robin=True)
    families = Counter()
    for _ in range(700):
        asked = sampler.questions(sample_scene(rng), rng, 5)
        assert len({q["question"] for q in asked}) == 5  # distinct questions per image
        families.update(q["question_type"] for q in asked)
        assert sampler.pending < 60
    assert max(families.values()) - min(families.values()) < 60, families  # even over families


@pytest.mark.parametrize("family", FAMILIES)
def test_single_scene_questions_are_reasonably_balanced(family: str) -> None:
    rng = random.Random(31)
    questions = [q for _ in range(2000) if (q := sample_question(sample_scene(rng), rng, family))]
    assert len(questions) > 1500
    shares = _shares(questions, family)
    if family in ("exist", "relation", "compare"):
        assert 0.40 <= shares["yes"] <= 0.60, shares
    elif family == "count":
        assert shares["0"] < 0.35 and len([s for s in shares.values() if s > 0.03]) >= 6, shares
    else:
        assert max(shares.values()) < 1.5 * min(shares.values()), shares


# ----------------------------------------------------------------------------- captions


def test_caption_and_description_are_true() -> None:
    rng = random.Random(9)
    for _ in range(300):
        objects = sample_scene(rng)
        text = caption(objects, rng)
        m = re.fullmatch(rf"a ({Z} {C} {S})(?: (left of|right of|above|below) a ({Z} {C} {S}))?", text)
        assert m, text
        if len(objects) == 1:
            assert m[2] is None and _matches(m[1], objects[0])
        else:
            first = [o for o in objects if _matches(m[1], o)]
            second = [o for o in objects if _matches(m[3], o)]
            relation = {"left of": lambda a, b: a.cx < b.cx, "right of": lambda a, b: a.cx > b.cx,
                        "above": lambda a, b: a.cy < b.cy, "below": lambda a, b: a.cy > b.cy}[m[2]]  # fmt: skip
            assert any(relation(a, b) for a in first for b in second if a is not b), (text, objects)
        listed = describe_objects(objects)
        assert listed.count(" a ") + listed.startswith("a ") == len(objects)
        lefts = sorted(objects, key=lambda o: o.cx)
        assert [f"{o.size} {o.color} {o.shape}" for o in lefts] == re.findall(rf"{Z} {C} {S}", listed)


# ----------------------------------------------------------------------------- files


def test_write_dataset_round_trips_through_load_vqa(tmp_path: Path) -> None:
    write_dataset(tmp_path, n_images=60, seed=2, side=96, questions_per_image=7)
    questions = json.loads((tmp_path / "questions.json").read_text())["questions"]
    annotations = json.loads((tmp_path / "annotations.json").read_text())["annotations"]
    captions = json.loads((tmp_path / "captions.json").read_text())["captions"]
    assert len(questions) == len(annotations) == 60 * 7 and len(captions) == 60
    assert len({q["question_id"] for q in questions}) == 420
    for ann in annotations:
        assert [a["answer_id"] for a in ann["answers"]] == list(range(1, 11))
        assert {a["answer"] for a in ann["answers"]} == {ann["multiple_choice_answer"]}
    families = Counter(a["question_type"] for a in annotations)
    assert set(families) == set(FAMILIES) and max(families.values()) - min(families.values()) <= 10

    examples = load_vqa(tmp_path)
    assert [e.question_id for e in examples] == [q["question_id"] for q in questions]
    ex = examples[0]
    assert ex.image_path == tmp_path / "images" / f"{ex.image_id}.png"
    assert ex.answers == [ex.multiple_choice_answer] * 10 and ex.caption
    with Image.open(ex.image_path) as image:
        assert image.size == (96, 96) and image.mode == "RGB"

    write_dataset(tmp_path / "again", n_images=60, seed=2, side=96, questions_per_image=7)
    assert (tmp_path / "again" / "questions.json").read_text() == (tmp_path / "questions.json").read_text()
    assert (tmp_path / "again/images/3.png").read_bytes() == (tmp_path / "images/3.png").read_bytes()


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_cli_writes_a_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # runpy runs the module as `python -m` does, without paying a second interpreter's imports.
    out = tmp_path / "shapes"
    argv = ["shapes", "--out", str(out), "--images", "3", "--seed", "1", "--side", "96",
            "--questions-per-image", "2"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("mmchat.data.shapes", run_name="__main__", alter_sys=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0.png", "1.png", "2.png"]
    assert len(load_vqa(out)) == 6


def test_family_weights_ask_hard_families_more_and_keep_answers_balanced() -> None:
    rng = random.Random(5)
    sampler = QuestionSampler(family_weights={"relation": 4.0, "count": 0.0})
    questions = [q for _ in range(1500) for q in sampler.questions(sample_scene(rng), rng, 1)]
    families = Counter(q["question_type"] for q in questions)
    assert families["count"] == 0
    assert 0.35 < families["relation"] / len(questions) < 0.55, families  # 4 of 9.0: 44 %, uniform: 14 %
    assert 0.45 <= _shares(questions, "relation")["yes"] <= 0.55
    with pytest.raises(ValueError, match="family_weights"):
        QuestionSampler(family_weights={"colour": 2.0})
    with pytest.raises(ValueError, match="leave no family"):
        QuestionSampler(family_weights={f: 0.0 for f in FAMILIES})


def test_one_family_alone_never_stalls_on_scenes_that_cannot_host_it() -> None:
    # Only relation: lone-object scenes host none, and the other families' templates must not make
    # the sampler think they could (it once queued targets forever here).
    rng = random.Random(2)
    sampler = QuestionSampler(family_weights={f: float(f == "relation") for f in FAMILIES})
    asked = [sampler.questions(sample_scene(rng), rng, 6) for _ in range(200)]
    assert {q["question_type"] for qs in asked for q in qs} == {"relation"}
    assert any(not qs for qs in asked)  # lone objects: nothing asked, and no hang
    assert sampler.pending < 50
