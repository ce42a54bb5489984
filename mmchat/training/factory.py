"""Build a new (untrained) model and its processor from configs: for training and for tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from ..modeling.configuration_mmchat import MMChatConfig
from ..modeling.modeling_mmchat import MMChatForConditionalGeneration
from ..modeling.processing_mmchat import BILINEAR_ANTIALIAS_SIGMA, MMChatProcessor
from .tokenizer import build_tokenizer

# ImageNet statistics, as ViTs expect; 0.5/0.5 would do as well for a ViT trained from scratch.
IMAGE_MEAN, IMAGE_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_processor(image_size: int, corpus: Iterable[str], vocab_size: int) -> MMChatProcessor:
    image_processor = ViTImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
    )
    # Scenes drawn at exactly the model's side are softened as the resize softens all larger ones.
    return MMChatProcessor(image_processor, build_tokenizer(corpus, vocab_size), antialias_sigma=BILINEAR_ANTIALIAS_SIGMA)


def build_model_and_processor(
    vision_config: dict[str, Any], text_config: dict[str, Any], corpus: Iterable[str], **fusion: Any
) -> tuple[MMChatForConditionalGeneration, MMChatProcessor]:
    """A fresh model whose vocabulary is a BPE tokenizer trained on `corpus`."""
    processor = build_processor(vision_config["image_size"], corpus, text_config["vocab_size"])
    tok = processor.tokenizer
    text_config = {
        **text_config,
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": None,
    }
    config = MMChatConfig(vision_config=vision_config, text_config=text_config, **fusion)
    return MMChatForConditionalGeneration(config), processor


# Widths of 64 and up: bitsandbytes quantizes in blocks of 64 and fails on narrower layers.
TINY_VISION = dict(
    model_type="vit", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=128, image_size=32, patch_size=8,
)
TINY_TEXT = dict(
    model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=128, vocab_size=300, max_position_embeddings=512,
)
TINY_CORPUS = [
    "what color is the small circle? red. how many objects are there? 3. is there a blue square? yes no",
    "what shape is the green object? triangle square circle. large small yellow purple orange",
] * 20


def build_tiny(seed: int = 0) -> tuple[MMChatForConditionalGeneration, MMChatProcessor]:
    """A model of about 0.3M parameters: random, but every code path of a real one."""
    import torch

    torch.manual_seed(seed)
    return build_model_and_processor(TINY_VISION, TINY_TEXT, TINY_CORPUS)


def build_from_pretrained(
    vision: str | dict[str, Any],
    language: str | dict[str, Any],
    corpus: Iterable[str] = (),
    gguf_file: str | None = None,
    **fusion: Any,
) -> tuple[MMChatForConditionalGeneration, MMChatProcessor]:
    """Fuse pretrained backbones (local paths or hub ids; a dict builds that part from scratch).

    A pretrained LM keeps its tokenizer, with our chat tokens added; its weights are copied
    into the fused model, whose cross-attention blocks are new (gates closed).
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from .tokenizer import ASSISTANT, END, PAD, SYSTEM, USER

    if isinstance(language, str):
        lm = AutoModelForCausalLM.from_pretrained(language, gguf_file=gguf_file, dtype="float32")
        tok = AutoTokenizer.from_pretrained(language, gguf_file=gguf_file)
        tok.add_special_tokens({"pad_token": PAD, "eos_token": END, "additional_special_tokens": [USER, ASSISTANT, SYSTEM]})
        tok.padding_side = "left"
        lm.resize_token_embeddings(len(tok))
        text_config = lm.config.to_dict()
    else:
        lm, text_config = None, language
    if isinstance(vision, str):
        vision_model = AutoModel.from_pretrained(vision)
        vision_config = vision_model.config.to_dict()
    else:
        vision_model, vision_config = None, vision
    if lm is None:
        return build_model_and_processor(vision_config, text_config, corpus, **fusion)

    processor = MMChatProcessor(
        ViTImageProcessorPil(size={"height": vision_config["image_size"], "width": vision_config["image_size"]},
                             image_mean=IMAGE_MEAN, image_std=IMAGE_STD),
        tok,
    )
    text_config = {**text_config, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    model = MMChatForConditionalGeneration(
        MMChatConfig(vision_config=vision_config, text_config=text_config, **fusion)
    )
    fused = set(model.config.cross_attention_layers)
    state = {}
    for key, value in lm.state_dict().items():
        parts = key.split(".")  # model.layers.{i}.rest -> model.layers.{i}.layer.rest where fused
        if key.startswith("model.layers.") and int(parts[2]) in fused:
            key = ".".join(parts[:3] + ["layer"] + parts[3:])
        state[key] = value
    missing, unexpected = model.language_model.load_state_dict(state, strict=False)
    if unexpected or not all(".cross_attn." in k for k in missing):
        # Only the new cross-attention blocks may lack weights; anything else means the LM is not Llama-style.
        raise ValueError(f"{language}: weights do not fit the fused LM (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if vision_model is not None:
        missing, _ = model.vision_model.load_state_dict(vision_model.state_dict(), strict=False)
        if missing:
            raise ValueError(f"{vision}: the vision encoder's weights lack {missing[:5]}")
    return model, processor
