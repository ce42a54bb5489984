"""The model: what a checkpoint carries with it (transformers' `configuration_*`/`modeling_*`/`processing_*`).

Importing this package registers the classes with transformers' Auto classes, so that
`AutoModelForImageTextToText.from_pretrained("models/mmchat-shapes")` and `AutoProcessor` load
them here without `trust_remote_code`. It also marks them for `register_for_auto_class`: every
`save_pretrained` then copies these files (they import each other only, relatively) beside the
weights and writes `auto_map` into config.json and processor_config.json, so a checkpoint copied
anywhere, or pushed to the hub, loads with `trust_remote_code=True` and no mmchat installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_mmchat import MMChatConfig
from .modeling_mmchat import MMChatForConditionalGeneration
from .processing_mmchat import MMChatProcessor

AutoConfig.register("mmchat", MMChatConfig, exist_ok=True)
AutoModel.register(MMChatConfig, MMChatForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MMChatConfig, MMChatForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MMChatConfig, MMChatProcessor, exist_ok=True)
# Saved checkpoints carry this code and an `auto_map` naming it (see above).
MMChatConfig.register_for_auto_class("AutoConfig")
MMChatForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
MMChatProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["MMChatConfig", "MMChatForConditionalGeneration", "MMChatProcessor"]
