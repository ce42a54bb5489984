"""The model: what a checkpoint carries with it (transformers' `configuration_*`/`modeling_*`/`processing_*`).

Importing this package registers the classes with transformers' Auto classes, so that
`AutoModelForImageTextToText.from_pretrained("models/mmchat-shapes")` and `AutoProcessor` load
them. The files import each other only, relatively, so they can be saved beside the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_mmchat import MMChatConfig
from .modeling_mmchat import MMChatForConditionalGeneration
from .processing_mmchat import MMChatProcessor

AutoConfig.register("mmchat", MMChatConfig, exist_ok=True)
AutoModel.register(MMChatConfig, MMChatForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MMChatConfig, MMChatForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MMChatConfig, MMChatProcessor, exist_ok=True)

__all__ = ["MMChatConfig", "MMChatForConditionalGeneration", "MMChatProcessor"]
