"""The JSON files a checkpoint may carry beside its weights (`world_gate.json`, `second_look.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_beside(source: str | Path, name: str) -> Any | None:
    """The JSON file `name` of a checkpoint (a folder, or a hub repo's file), or None if it has none."""
    from transformers.utils import cached_file

    path = cached_file(str(source), name, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    return None if path is None else json.loads(Path(path).read_text())
