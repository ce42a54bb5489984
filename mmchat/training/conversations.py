"""Training conversations: one image, several question/answer turns, tokenized with the chat template.

Several questions about one image in one sequence is how the app is used (multi-turn chat), and
it is cheap to train: the image is encoded once for all its questions. Only the answers (and the
<|end|> that closes them) carry a loss.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..data.phrasing import rephrase
from ..data.shapes import (
    COLORS,
    OBJECT_COUNT_RANGE,
    SHAPES,
    SIDE_RANGE,
    SIZES,
    QuestionSampler,
    ShapeObject,
    render_scene,
    sample_scene,
    weight_list,
)
from ..data.vqa import VQAExample
from ..modeling.processing_mmchat import MMChatProcessor
from ..serving.images import load_image

IGNORE_INDEX = -100


@dataclass
class Conversation:
    image: Image.Image
    turns: list[tuple[str, str]]  # (question, answer)
    objects: list[ShapeObject] | None = None  # the rendered scene, where known: for the centre loss


def encode_conversation(processor: MMChatProcessor, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the whole chat and labels that are -100 everywhere but on the answers."""
    tok = processor.tokenizer
    input_ids: list[int] = []
    labels: list[int] = []
    for question, answer in turns:
        prompt = processor.prompt([{"role": "user", "content": question}])  # <|user|>q<|end|><|assistant|>
        reply = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        input_ids += prompt_ids + reply
        labels += [IGNORE_INDEX] * len(prompt_ids) + reply
    return input_ids, labels


# Class 0: no object centre in this patch; then one class per (colour, shape, size).
KINDS: tuple[tuple[str, str, str], ...] = tuple((c, s, z) for c in COLORS for s in SHAPES for z in SIZES)
_KIND_INDEX = {kind: i + 1 for i, kind in enumerate(KINDS)}


def centre_targets(scenes: Sequence[Sequence[ShapeObject] | None], grid: int) -> torch.Tensor:
    """The centre loss's targets (`mmchat.training.centres`): (B, grid*grid) class per patch, row-major;
    rows of images without a known scene are ignored.

    No two centres share a patch at the default grid (12 x 12): boxes of at least 12 % of the side
    that do not overlap have centres at least 12 % apart on one axis, more than a patch's 8.3 %.
    """
    targets = torch.full((len(scenes), grid * grid), IGNORE_INDEX, dtype=torch.long)
    for i, objects in enumerate(scenes):
        if objects is None:
            continue
        targets[i] = 0
        for o in objects:
            # The image is resized to the model's square input, so relative positions carry over.
            row = min(int(o.cy / o.image_side * grid), grid - 1)
            col = min(int(o.cx / o.image_side * grid), grid - 1)
            targets[i, row * grid + col] = _KIND_INDEX[(o.color, o.shape, o.size)]
    return targets


class ConversationCollator:
    """Conversations -> a padded batch with pixel_values and labels (right padding for training).

    With `centre_grid`, also `centre_targets`: each patch's object-centre class (`mmchat.training.centres`).
    """

    def __init__(self, processor: MMChatProcessor, max_length: int = 512, centre_grid: int | None = None):
        self.processor = processor
        self.max_length = max_length
        self.centre_grid = centre_grid

    def __call__(self, conversations: list[Conversation]) -> dict[str, torch.Tensor]:
        encoded = [encode_conversation(self.processor, c.turns) for c in conversations]
        encoded = [(ids[: self.max_length], labels[: self.max_length]) for ids, labels in encoded]
        T = max(len(ids) for ids, _ in encoded)
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), T), pad, dtype=torch.long)
        labels = torch.full((len(encoded), T), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), T), dtype=torch.long)
        for i, (ids, lab) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attention_mask[i, : len(ids)] = 1
        pixel_values = self.processor.pixel_values([c.image for c in conversations])
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": pixel_values["pixel_values"],
        }
        if self.centre_grid:
            batch["centre_targets"] = centre_targets([c.objects for c in conversations], self.centre_grid)
        return batch


def object_count_weights(weights: dict[int, float]) -> tuple[list[int], list[float]]:
    """{5: 2.0, 6: 2.0} -> ([1, ..., 6], [1, 1, 1, 1, 2, 2]): every count the spec allows, 1 where not named."""
    counts = list(range(OBJECT_COUNT_RANGE[0], OBJECT_COUNT_RANGE[1] + 1))
    return counts, weight_list(weights, counts, "object counts", "are all 0 weight: no scene could be drawn")


def _worker_rng(seed: int) -> random.Random:
    info = get_worker_info()
    return random.Random(seed * 1000 + (info.id if info is not None else 0))


class ShapesConversations(IterableDataset):
    """Endless ShapesVQA conversations rendered on the fly, varied within the spec.

    Each scene gets a side drawn from 96-512 px, hard or anti-aliased edges and colour or grey
    noise, so that the model learns shapes, colours, sizes and positions rather than the pixels of
    one renderer. `max_objects` and `families` narrow the scenes and questions (still within the
    spec) for a curriculum: a model trained from scratch first learns to find one or two objects.
    `family_weights` asks some families more often than others (1 where not given);
    `object_weights` ({number of objects: weight}, 1 where not given) draws crowded scenes more
    often than the spec's uniform 1-6, for training only: counting errs most where objects crowd.
    `more_variety` widens how scenes are drawn, still within the spec: a third of them at 96-160 px
    (sides otherwise uniform over the range, so small renders are rare), half the triangles
    equilateral (0.87 as tall as their box), and noise over the objects too in a third of images.
    `small_sides` overrides that third (the share of scenes drawn at 96-160 px) and `small_objects`
    the share of objects drawn small (the spec's half otherwise), for training only: the shipped
    model's misses were small objects, most of all in small renders.
    `native_sides` is the share of scenes drawn at exactly `native_side` px, the model's own input
    side, which reach the ViT unresampled (sides are otherwise uniform, so almost none do): the
    shipped model counted 100 % at 224 px but 97.5 % of the same renderer's scenes at 96 px.
    `phrasing_v2` is the share of questions asked in a random form of the spec's version 2 table
    (`mmchat.data.phrasing`); the rest keep the exact templates.
    """

    def __init__(
        self,
        seed: int,
        max_turns: int = 6,
        min_turns: int = 1,
        side_range: tuple[int, int] = SIDE_RANGE,
        max_objects: int | None = None,
        families: Sequence[str] | None = None,
        family_weights: dict[str, float] | None = None,
        object_weights: dict[int, float] | None = None,
        more_variety: bool = False,
        phrasing_v2: float = 0.0,
        small_sides: float | None = None,
        small_objects: float | None = None,
        native_side: int | None = None,
        native_sides: float = 0.0,
    ):
        self.seed, self.min_turns, self.max_turns, self.side_range = seed, min_turns, max_turns, side_range
        self.max_objects, self.families, self.family_weights = max_objects, families, family_weights
        self.object_counts = object_count_weights(object_weights) if object_weights else None
        self.more_variety, self.phrasing_v2 = more_variety, phrasing_v2
        self.small_sides = (1 / 3 if more_variety else 0.0) if small_sides is None else small_sides
        self.small_objects = small_objects
        self.native_side, self.native_sides = native_side, native_sides

    def __iter__(self) -> Iterator[Conversation]:
        rng = _worker_rng(self.seed)
        sampler = QuestionSampler(self.families, family_weights=self.family_weights)  # balanced answers across scenes, so the image must be read
        while True:
            lo, hi = self.side_range
            if self.native_sides and self.native_side and rng.random() < self.native_sides:
                side = min(max(self.native_side, lo), hi)
            else:
                if self.small_sides and rng.random() < self.small_sides:
                    hi = min(hi, max(lo, 160))
                side = rng.randint(lo, hi)
            n = rng.choices(*self.object_counts)[0] if self.object_counts else None
            objects = sample_scene(rng, side, n, self.small_objects)
            if self.max_objects is not None and len(objects) > self.max_objects:
                continue
            variety = (
                {"triangle_height": rng.choice((1.0, 0.87)), "noise_over_objects": rng.random() < 1 / 3}
                if self.more_variety
                else {}
            )
            image = render_scene(
                objects, rng, side, supersample=rng.choice((1, 2, 4)), shared_noise=rng.random() < 0.3, **variety
            )
            k = rng.randint(self.min_turns, self.max_turns)
            turns = [
                (rephrase(q["question"], rng) if rng.random() < self.phrasing_v2 else q["question"], q["answer"])
                for q in sampler.questions(objects, rng, k)
            ]
            if turns:
                yield Conversation(image, turns, objects)


class VQAConversations(IterableDataset):
    """Endless conversations from a VQA-layout data set: each image with some of its questions."""

    def __init__(self, examples: Sequence[VQAExample], seed: int, max_turns: int = 6, min_turns: int = 1):
        by_image: dict[int, list[VQAExample]] = defaultdict(list)
        for ex in examples:
            by_image[ex.image_id].append(ex)
        self.groups = list(by_image.values())
        self.seed, self.min_turns, self.max_turns = seed, min_turns, max_turns

    def __iter__(self) -> Iterator[Conversation]:
        rng = _worker_rng(self.seed)
        while True:
            group = rng.choice(self.groups)
            picked = rng.sample(group, min(len(group), rng.randint(self.min_turns, self.max_turns)))
            image = load_image(picked[0].image_path)
            yield Conversation(image, [(ex.question, ex.multiple_choice_answer) for ex in picked])


class Mixture(IterableDataset):
    """Draw from several endless conversation streams with the given weights."""

    def __init__(self, sources: Sequence[IterableDataset], weights: Sequence[float], seed: int):
        self.sources, self.weights, self.seed = list(sources), list(weights), seed

    def __iter__(self) -> Iterator[Conversation]:
        rng = _worker_rng(self.seed + 7)
        streams = [iter(s) for s in self.sources]
        while True:
            yield next(rng.choices(streams, weights=self.weights)[0])
