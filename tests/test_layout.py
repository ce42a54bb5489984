"""The layout's arrows: what each wing may import, and that the light parts stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmchat"
# What each wing must never import (docs/architecture.md): the arrows point down.
FORBIDDEN = {
    "modeling": {"serving", "training", "evaluation", "data"},
    "data": {"modeling", "serving", "training", "evaluation"},
    "serving": {"training", "evaluation"},
    "evaluation": {"training"},
}


def imported_wings(path: Path) -> set[str]:
    """The mmchat wings a module imports, absolute (`mmchat.x`) or relative (`..x`)."""
    wings = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 0 and parts[0] == "mmchat" and len(parts) > 1:
                wings.add(parts[1])
            elif node.level > 0:
                here = path.relative_to(PACKAGE).parts[:-1]  # the module's package inside mmchat
                base = here[: len(here) - (node.level - 1)]
                target = [*base, *[p for p in parts if p]]
                if target:
                    wings.add(target[0])
        elif isinstance(node, ast.Import):
            wings |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mmchat.")}
    return wings


@pytest.mark.parametrize("wing", sorted(FORBIDDEN))
def test_no_wing_imports_a_wing_above_it(wing: str) -> None:
    for path in sorted((PACKAGE / wing).rglob("*.py")):
        bad = imported_wings(path) & FORBIDDEN[wing]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_the_metric_and_the_package_import_without_torch() -> None:
    code = "import sys, mmchat, mmchat.evaluation.vqa_metric; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_one_command_runs_every_tool() -> None:
    out = subprocess.run([sys.executable, "-m", "mmchat", "--help"], capture_output=True, text=True, check=True).stdout
    assert all(cmd in out for cmd in ("train", "evaluate", "shapes", "easy-vqa", "count-probe", "position-probe"))
    bad = subprocess.run([sys.executable, "-m", "mmchat", "fly"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'fly'" in bad.stderr
