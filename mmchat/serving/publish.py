"""Publish to the Hugging Face hub: a model folder as a model repo, this project as a Space.

    python -m mmchat publish model models/mmchat-shapes --repo-id OWNER/mmchat-shapes
    python -m mmchat publish space --repo-id OWNER/mmchat --model-repo OWNER/mmchat-shapes

Each command first stages exactly the files it uploads in one folder (`--dry-run DIR` writes that
folder and stops), then creates the repo if needed and uploads the folder with huggingface_hub's
`upload_folder`, which stores large and binary files through LFS/Xet. The token is the one of
`hf auth login` or the HF_TOKEN environment variable.

The Space is `app.py`, the `mmchat` package, `requirements.txt`, `README.md` (its front matter is
the Space's config, given `models:` and `suggested_hardware:` here), `docs/`, `assets/` and the
default model, so it starts with no download. `--variable KEY=VALUE` sets Space variables such as
MMCHAT_MODEL or MMCHAT_QUANTIZATION; secrets (HF_TOKEN for a gated model) are set on the Space's
settings page, never on a command line.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, SpaceCard

ROOT = Path(__file__).resolve().parents[2]
# What a Space needs besides the package: paths relative to the project's root.
SPACE_FILES = ("app.py", "requirements.txt")
SPACE_FOLDERS = ("assets", "docs")
DEFAULT_MODEL = Path("models") / "mmchat-shapes"
# Binary files go through LFS/Xet; `upload_folder` does so itself, this tells git clones the same.
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in ("*.safetensors", "*.bin", "*.png", "*.jpg", "*.jpeg")
)
# Never uploaded: caches, editors' and tests' leftovers.
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store", ".ipynb_checkpoints")
HARDWARE = ("cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "a10g-small", "a10g-large", "a100-large")


class PublishError(RuntimeError):
    """Something to publish is missing or malformed; the message says what."""


def stage_model(model_dir: Path, out: Path) -> Path:
    """`out` holds the model folder as it is, plus `.gitattributes`."""
    if not (model_dir / "config.json").is_file():
        raise PublishError(f"{model_dir} holds no config.json: give a saved model folder")
    if not (model_dir / "README.md").is_file():
        raise PublishError(f"{model_dir} has no README.md: a model repo needs its card")
    shutil.copytree(model_dir, out, ignore=IGNORED, dirs_exist_ok=True)
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    return out


def space_readme(readme: Path, models: Sequence[str], hardware: str) -> str:
    """The project README with the Space's front matter extended: `models:` and `suggested_hardware:`."""
    card = SpaceCard.load(readme)
    if card.data.sdk != "gradio" or card.data.app_file != "app.py":
        raise PublishError(f"{readme}'s front matter must say `sdk: gradio` and `app_file: app.py`")
    if models:
        card.data.models = list(models)
    card.data.suggested_hardware = hardware
    return str(card)


def stage_space(out: Path, model_dir: Path, models: Sequence[str], hardware: str, root: Path = ROOT) -> Path:
    """`out` holds the Space: app, package, requirements, README, docs, assets and the default model."""
    out.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copy2(root / name, out / name)
    for name in (*SPACE_FOLDERS, "mmchat"):
        shutil.copytree(root / name, out / name, ignore=IGNORED, dirs_exist_ok=True)
    # app.py serves models/mmchat-shapes beside itself by default.
    stage_model(model_dir, out / DEFAULT_MODEL)
    (out / DEFAULT_MODEL / ".gitattributes").unlink()  # the Space's own one covers it
    (out / "README.md").write_text(space_readme(root / "README.md", models, hardware))
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    return out


def upload(folder: Path, repo_id: str, repo_type: str, private: bool, message: str, api: HfApi | None = None) -> str:
    """Create the repo if needed and upload `folder` as one commit; returns the commit's URL."""
    api = api or HfApi()
    extra = {"space_sdk": "gradio"} if repo_type == "space" else {}
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **extra)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, commit_message=message)
    return str(getattr(info, "commit_url", info))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mmchat publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    model = sub.add_parser("model", help="upload a model folder as a model repo")
    model.add_argument("model_dir", type=Path, help="a saved model folder (its code, weights and README.md card)")
    space = sub.add_parser("space", help="upload this project as a Gradio Space")
    space.add_argument("--model", type=Path, default=ROOT / DEFAULT_MODEL, help="the model folder the Space serves by default")
    space.add_argument("--model-repo", action="append", default=[], metavar="ID", help="hub model ids the Space uses (front matter `models:`)")
    space.add_argument("--hardware", default="cpu-basic", choices=HARDWARE, help="front matter `suggested_hardware:` (default cpu-basic)")
    space.add_argument("--variable", action="append", default=[], metavar="KEY=VALUE", help="a Space variable, e.g. MMCHAT_QUANTIZATION=nf4")
    for p in (model, space):
        p.add_argument("--repo-id", help="OWNER/NAME on the hub (needed unless --dry-run)")
        p.add_argument("--private", action="store_true", help="create the repo private")
        p.add_argument("--dry-run", type=Path, metavar="DIR", help="write the files that would be uploaded to DIR and stop")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.repo_id:
        parser.error("--repo-id is needed (or --dry-run DIR)")
    return args


def main(argv: Sequence[str] | None = None, api: HfApi | None = None) -> int:
    args = parse_args(argv)
    variables = dict(v.split("=", 1) for v in getattr(args, "variable", []) if "=" in v)
    if len(variables) != len(getattr(args, "variable", [])):
        print("error: --variable takes KEY=VALUE", file=sys.stderr)
        return 2
    if args.dry_run and args.dry_run.exists() and any(args.dry_run.iterdir()):
        print(f"error: {args.dry_run} is not empty; give a new folder for --dry-run", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mmchat-publish-") as tmp:
        folder = args.dry_run or Path(tmp) / "upload"
        try:
            if args.what == "model":
                stage_model(args.model_dir, folder)
            else:
                stage_space(folder, args.model, args.model_repo, args.hardware)
        except (PublishError, OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if args.dry_run:
            print(f"wrote the {len(files)} files a {args.what} upload would send to {folder}")
            for key, value in variables.items():
                print(f"would set Space variable {key}={value}")
            return 0
        repo_type = "model" if args.what == "model" else "space"
        url = upload(folder, args.repo_id, repo_type, args.private, f"Publish with python -m mmchat publish {args.what}", api)
        if variables:
            api = api or HfApi()
            for key, value in variables.items():
                api.add_space_variable(args.repo_id, key, value)
        print(f"uploaded {len(files)} files to {args.repo_id} ({repo_type}): {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
