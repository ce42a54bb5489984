"""`pip install .` brings what `pip install -r requirements.txt` does: the pins are the same."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


def test_pyproject_declares_the_requirements_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(requirement_lines("requirements.txt"))
    assert sorted(project["optional-dependencies"]["dev"]) == sorted(requirement_lines("requirements-dev.txt"))
    assert project["scripts"]["mmchat"] == "mmchat.__main__:main"
