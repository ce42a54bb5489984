"""Model families the app serves, one small adapter each, found by the config's `model_type`."""

from __future__ import annotations

from .base import FamilyAdapter, Turn
from .blip import BlipAdapter
from .mllama import MllamaAdapter
from .mmchat import MMChatAdapter

FAMILIES: dict[str, type[FamilyAdapter]] = {
    model_type: adapter
    for adapter in (MMChatAdapter, BlipAdapter, MllamaAdapter)
    for model_type in adapter.model_types
}

__all__ = ["FAMILIES", "FamilyAdapter", "Turn"]
