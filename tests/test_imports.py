"""Every module of the package imports on its own, first (no import cycle hides behind another's order)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One interpreter: torch and transformers stay loaded, mmchat's modules are forgotten before each.
SCRIPT = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "mmchat" or m.startswith("mmchat.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first():
    names = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in sorted((ROOT / "mmchat").rglob("*.py"))
        if path.name not in ("__main__.py",)
    ]
    names = [name.removesuffix(".__init__") for name in names]
    assert "mmchat.serving.traced" in names
    done = subprocess.run([sys.executable, "-c", SCRIPT, *names], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
