"""mmchat: visual question answering chat with a gated cross-attention fusion model."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .config import MMChatConfig
from .model import MMChatForConditionalGeneration

AutoConfig.register("mmchat", MMChatConfig)
AutoModel.register(MMChatConfig, MMChatForConditionalGeneration)
AutoModelForImageTextToText.register(MMChatConfig, MMChatForConditionalGeneration)

__all__ = ["MMChatConfig", "MMChatForConditionalGeneration"]
