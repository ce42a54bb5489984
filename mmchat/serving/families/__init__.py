"""Model families the app serves, one small adapter each, found by the config's `model_type`
(or, for a model on a chat-completions server, by the source's prefix)."""

from __future__ import annotations

from .base import FamilyAdapter, ServingError, Turn
from .blip import BlipAdapter
from .mllama import MllamaAdapter
from .mmchat import MMChatAdapter
from .openai_remote import OpenAIRemoteAdapter

FAMILIES: dict[str, type[FamilyAdapter]] = {
    model_type: adapter
    for adapter in (MMChatAdapter, BlipAdapter, MllamaAdapter)
    for model_type in adapter.model_types
}

# Chosen by the source's prefix ("openai:URL#MODEL_ID"), not by a checkpoint's model_type.
REMOTE_FAMILIES: dict[str, type[OpenAIRemoteAdapter]] = {"openai:": OpenAIRemoteAdapter}

__all__ = ["FAMILIES", "REMOTE_FAMILIES", "FamilyAdapter", "ServingError", "Turn"]
