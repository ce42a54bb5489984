"""Train the world gate's image check and save it beside a checkpoint (`world_gate.json`).

    python -m mmchat train-gate --model models/mmchat-shapes --seed 1

In-world: ShapesVQA scenes rendered on the fly with every variety the training uses (96-512 px,
hard or soft edges, colour or grey noise, equilateral triangles, noise over objects, a few empty
canvases), some saved as JPEG, and easy-vqa's train images. Out-of-world: the training sources of
`mmchat.data.out_of_world` only (`TRAIN_SOURCES`); the held-out sources are never seen here, so
that measuring on them (with `python -m mmchat evaluate`) means something.

A small MLP (one tanh layer) over `mmchat.serving.gate.image_features`, fitted with full-batch
Adam in numpy; the threshold is set on a separate in-world calibration set so that at most
`--max-false-declines` of in-world images would be declined. Printed: the calibration figures.
"""

from __future__ import annotations

import argparse
import io
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.out_of_world import TRAIN_SOURCES, out_of_world_image
from ..data.shapes import SIDE_RANGE, render_scene, sample_scene
from ..serving.gate import FEATURES, WorldGate, image_features

# What the app's note says this world is, and questions it can answer (world_gate.json carries them).
ABOUT = ("coloured circles, squares and triangles (red, green, blue, yellow, purple or orange; small or "
         "large) on a plain light background")
EXAMPLES = ("How many red circles are there?", "Is the small square to the left of the blue triangle?",
            "What color is the large circle?")


def _jpeg(image: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(60, 95))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def in_world_image(rng: random.Random, easy_vqa_paths: Sequence[str] = ()) -> Image.Image:
    """One in-world image: a varied ShapesVQA render, or (a fifth of the time) an easy-vqa image."""
    if easy_vqa_paths and rng.random() < 0.2:
        return Image.open(rng.choice(easy_vqa_paths)).convert("RGB")
    side = rng.randint(*SIDE_RANGE) if rng.random() < 2 / 3 else rng.randint(96, 160)
    objects = [] if rng.random() < 0.03 else sample_scene(rng, side)
    image = render_scene(objects, rng, side, supersample=rng.choice((1, 2, 4)), shared_noise=rng.random() < 0.3,
                         triangle_height=rng.choice((1.0, 0.87)), noise_over_objects=rng.random() < 1 / 3)
    return _jpeg(image, rng) if rng.random() < 0.2 else image


def _features(make: Callable[[random.Random], Image.Image], n: int, rng: random.Random) -> np.ndarray:
    return np.stack([image_features(make(rng)) for _ in range(n)])


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 16, steps: int = 3000, lr: float = 0.01,
            seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """A one-hidden-layer tanh MLP for P(y = 1), classes weighted equally, by full-batch Adam."""
    g = np.random.default_rng(seed)
    params = [g.normal(0, 0.5, (x.shape[1], hidden)), np.zeros(hidden), g.normal(0, 0.5, (hidden, 1)), np.zeros(1)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    weight = np.where(y == 1, 0.5 / max(1, y.sum()), 0.5 / max(1, (1 - y).sum()))
    for t in range(1, steps + 1):
        w1, b1, w2, b2 = params
        h = np.tanh(x @ w1 + b1)
        p = 1 / (1 + np.exp(-(h @ w2 + b2)[:, 0]))
        d = ((p - y) * weight)[:, None]  # d loss / d logit
        dh = (d @ w2.T) * (1 - h**2)
        grads = [x.T @ dh + 1e-4 * w1, dh.sum(0), h.T @ d + 1e-4 * w2, d.sum(0)]
        for i, grad in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * grad
            v[i] = 0.999 * v[i] + 0.001 * grad**2
            params[i] = params[i] - lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
    return [(params[0], params[1]), (params[2], params[3])]


def train_gate(n_in: int, n_out: int, seed: int, max_false_declines: float = 0.001,
               easy_vqa_paths: Sequence[str] = ()) -> tuple[WorldGate, dict[str, float]]:
    rng = random.Random(seed)
    x_in = _features(lambda r: in_world_image(r, easy_vqa_paths), n_in, rng)
    per_source = max(1, n_out // len(TRAIN_SOURCES))
    x_out = np.concatenate([_features(lambda r, s=s: out_of_world_image(s, r), per_source, rng) for s in TRAIN_SOURCES])
    x = np.concatenate([x_in, x_out])
    y = np.concatenate([np.ones(len(x_in)), np.zeros(len(x_out))])
    mean, scale = x.mean(0), x.std(0) + 1e-6
    layers = fit_mlp((x - mean) / scale, y, seed=seed)
    config = {
        "questions": "shapes-vqa-v2",
        "about": ABOUT,
        "examples": list(EXAMPLES),
        "image": {"features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
                  "layers": [(w.tolist(), b.tolist()) for w, b in layers], "threshold": 0.5},
    }
    gate = WorldGate(config)
    # The threshold from fresh in-world images (not the ones fitted): at most this share declined.
    calibration = gate.image_scores(_features(lambda r: in_world_image(r, easy_vqa_paths), n_in, rng))
    threshold = float(min(0.5, np.quantile(calibration, max_false_declines)))
    config["image"]["threshold"] = threshold
    gate = WorldGate(config)
    report = {
        "threshold": threshold,
        "calibration_false_declines": float((calibration < threshold).mean()),
        "train_out_of_world_declined": float((gate.image_scores(x_out) < threshold).mean()),
        "train_in_world_declined": float((gate.image_scores(x_in) < threshold).mean()),
    }
    return gate, report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmchat train-gate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder the gate is saved into")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--in-world", type=int, default=3000, help="in-world images to fit (and as many to calibrate)")
    parser.add_argument("--out-of-world", type=int, default=3000, help="out-of-world images to fit")
    parser.add_argument("--max-false-declines", type=float, default=0.001)
    parser.add_argument("--no-easy-vqa", action="store_true", help="leave easy-vqa's train images out")
    args = parser.parse_args(argv)
    paths: list[str] = []
    if not args.no_easy_vqa:
        import easy_vqa

        paths = list(easy_vqa.get_train_image_paths().values())
    gate, report = train_gate(args.in_world, args.out_of_world, args.seed, args.max_false_declines, paths)
    print(f"saved {gate.save(Path(args.model))}")
    for key, value in report.items():
        print(f"  {key}: {value:.4f}")


if __name__ == "__main__":
    main()
