"""Shared fixtures: tiny random models saved to temporary folders, synthetic images."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from mmchat.data.out_of_world import EMOJI_FONT
from mmchat.training.factory import build_tiny

# The app fixtures (a served `app.py` and its engine) as a plugin, not an import: registered once,
# their session-scoped server is shared by every test directory.
pytest_plugins = ["fixtures_app"]


@pytest.fixture
def emoji_font() -> None:
    """Tests that draw emoji need Debian's font (`scripts/test.sh` installs it as root): skipped where
    it is missing, unless MMCHAT_REQUIRE_BROWSER=1 (CI, which has the system packages) makes that a failure."""
    if not EMOJI_FONT.exists():
        if os.environ.get("MMCHAT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MMCHAT_REQUIRE_BROWSER=1 but {EMOJI_FONT} is missing: apt-get install fonts-noto-color-emoji")
        pytest.skip(f"{EMOJI_FONT} is missing: apt-get install fonts-noto-color-emoji")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny mmchat model with open gates (so the image matters), saved like a real checkpoint."""
    model, processor = build_tiny(seed=0)
    with torch.no_grad():
        for block in model.cross_attention_blocks():
            block.attn_gate.fill_(1.0)
            block.mlp_gate.fill_(1.0)
    path = tmp_path_factory.mktemp("tiny-mmchat")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture
def shapes_image() -> Image.Image:
    """A synthetic picture: a red square and a blue disc on grey."""
    a = np.full((64, 64, 3), 200, np.uint8)
    a[8:24, 8:24] = (220, 40, 40)
    yy, xx = np.mgrid[:64, :64]
    a[(yy - 44) ** 2 + (xx - 44) ** 2 < 100] = (40, 80, 220)
    return Image.fromarray(a)
