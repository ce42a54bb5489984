"""Time and peak memory of the largest accepted upload through `load_image`, against the old path.

    python benchmarks/upload_bench.py [--megapixels 39] [--repeats 3]

Makes a photo-like picture of the given size (smooth gradients, shapes and mild noise, so that it
compresses like a photo), saves it as a JPEG (quality 90) and a PNG, then measures in a fresh
subprocess per run, so that each peak is its own:

- new: `mmchat.serving.images.load_image(path)` (draft/reduce while decoding, checks, RGB);
- answer: what the app does with the upload, on `--model`: load and checks, the world gate's verdict,
  `ChatEngine.answer` and its heat-map, one torch thread as `python app.py` runs (the gate's verdict
  is set aside, so that the model answers the photo as it would a scene this big);
- old: what the app did before: `Image.open(path)`, a full `load()`, EXIF transpose, `to_rgb`.

Each subprocess first loads a 96x64 file of the same format, as a serving app has at its first
upload (Pillow's plugins and the decoders' libraries loaded), so the figures are per upload.

Prints wall time and the rise of peak RSS (VmHWM after the call, reset to the RSS before it through
/proc/self/clear_refs, minus that RSS) per path and format,
and the old/new ratios. Both are measured in the same run, on the same files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from PIL import Image, ImageOps
from mmchat.modeling.processing_mmchat import to_rgb
from mmchat.serving.images import load_image

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

def old(path):
    image = Image.open(path)
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))

def answered(path):
    # What the app does with an upload: load and check it, ask the world gate, answer, draw the
    # heat-map. The gate would decline this photo before the model ran, so its verdict is computed
    # (its cost counted) and then set aside: the model answers as it would for a scene this big.
    image, question = engine.check(path, QUESTION)
    gate.ask(image, question)
    answer = engine.answer(image, question)
    engine.attention_overlay(image, question, answer)
    return image

if sys.argv[1] == "answer":
    import torch
    from mmchat.serving.engine import ChatEngine
    torch.set_num_threads(1)  # as `python app.py` runs
    engine = ChatEngine.from_pretrained(sys.argv[4], device="cpu")
    gate, engine.adapter.world_gate = engine.adapter.world_gate, None
    QUESTION = "How many objects are there?"
else:
    Image.MAX_IMAGE_PIXELS = None  # the old path's own pixel check is not what is measured
fn = {{"new": load_image, "old": old, "answer": answered}}[sys.argv[1]]
# Warm up as a serving app is after its first upload: plugins loaded, libraries mapped.
fn(sys.argv[3])
# The peak so far (imports) is not this upload's: reset the high-water mark to the current RSS.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status_kb("VmRSS")
start = time.perf_counter()
image = fn(sys.argv[2])
seconds = time.perf_counter() - start
peak = status_kb("VmHWM")
print(json.dumps({{"seconds": seconds, "extra_mb": (peak - before) / 1024, "size": image.size}}))
"""


def photo_like(megapixels: float, seed: int = 0) -> Image.Image:
    """A 3:2 picture of about `megapixels`: gradients, a few shapes, noise of a few levels."""
    height = int((megapixels * 1e6 / 1.5) ** 0.5)
    width = int(height * 1.5)
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    image = np.empty((height, width, 3), np.uint8)
    for c, (a, b) in enumerate([(180, 60), (120, 90), (60, 150)]):
        image[..., c] = np.clip(a + b * np.sin(3 * x + 2 * y + c) * np.cos(2 * y - x), 0, 255).astype(np.uint8)
    image = Image.fromarray(image)
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = rng.integers(0, width - 400), rng.integers(0, height - 400)
        size = int(rng.integers(100, 400))
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noise = Image.effect_noise((width, height), 6).convert("RGB")
    return Image.blend(image, noise, 0.05)


def measure(path_kind: str, path: Path, repeats: int, model: str = "") -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(root=str(ROOT)), path_kind, str(path),
             str(path.with_suffix(".small" + path.suffix)), model],
            capture_output=True, text=True, check=True,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "extra_mb": statistics.median(r["extra_mb"] for r in runs),
        "size": runs[0]["size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=39.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is shown")
    parser.add_argument("--formats", nargs="+", default=["JPEG", "PNG"], choices=["JPEG", "PNG", "HEIC", "AVIF"])
    parser.add_argument("--model", default=str(ROOT / "models" / "mmchat-shapes"),
                        help="the model whose whole answer (load, gate, answer, heat-map) is also timed")
    args = parser.parse_args()
    picture = photo_like(args.megapixels)
    print(f"picture: {picture.width}x{picture.height} = {picture.width * picture.height / 1e6:.1f} MP")
    with tempfile.TemporaryDirectory() as tmp:
        if "HEIC" in args.formats:
            import pillow_heif

            pillow_heif.register_heif_opener()
        suffix = {"JPEG": ".jpg", "PNG": ".png", "HEIC": ".heic", "AVIF": ".avif"}
        files = {fmt: Path(tmp) / f"big{suffix[fmt]}" for fmt in args.formats}
        for fmt, path in files.items():
            picture.save(path, **({"compress_level": 6} if fmt == "PNG" else {"quality": 90}))
        small = picture.resize((96, 64))
        for path in files.values():  # the warm-up file of each format
            small.save(path.with_suffix(".small" + path.suffix))
        del picture
        for fmt, path in files.items():
            old = measure("old", path, args.repeats)
            new = measure("new", path, args.repeats)
            whole = measure("answer", path, args.repeats, args.model)
            print(
                f"{fmt} ({path.stat().st_size / 1e6:.1f} MB file): "
                f"old {old['seconds']:.2f} s, +{old['extra_mb']:.0f} MB -> {tuple(old['size'])}; "
                f"new {new['seconds']:.2f} s, +{new['extra_mb']:.0f} MB -> {tuple(new['size'])}; "
                f"time old/new {old['seconds'] / new['seconds']:.1f}x, "
                f"memory old/new {old['extra_mb'] / max(new['extra_mb'], 1):.1f}x; "
                f"answered (load, gate, answer, heat-map) {whole['seconds']:.2f} s, +{whole['extra_mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
