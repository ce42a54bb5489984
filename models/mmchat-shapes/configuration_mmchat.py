"""MMChatConfig: a vision encoder config, a decoder-only LM config, and where they meet."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig


class MMChatConfig(PretrainedConfig):
    r"""Configuration of [`MMChatForConditionalGeneration`].

    Args:
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Config of any transformers vision encoder whose output has `last_hidden_state`
            of shape (B, N, Dv). Defaults to a small `ViTConfig`.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of any transformers decoder-only LM whose decoder layers receive the
            forward's extra keyword arguments (Llama, Qwen2, Mistral, ...). Defaults to a
            small `LlamaConfig`.
        cross_attention_layers (`list[int]`, *optional*):
            Indices of the LM's decoder layers that get a gated cross-attention block in
            front of them. Defaults to every `cross_attention_every`-th layer, from 0.
        cross_attention_every (`int`, *optional*, defaults to 1):
            Spacing used when `cross_attention_layers` is not given.
        cross_attention_heads (`int`, *optional*):
            Heads of the cross-attention; defaults to the LM's `num_attention_heads`.
        cross_attention_mlp_ratio (`int`, *optional*, defaults to 4):
            Width of the gated MLP after each cross-attention, as a multiple of the LM's width.
        cross_attention_gate_init (`float`, *optional*, defaults to 0.0):
            Initial value of every tanh gate. 0 makes the fused model start as exactly its LM,
            which is what a pretrained LM needs; an LM trained from scratch has nothing to keep.
        patch_position_code (`bool`, *optional*, defaults to False):
            Add a fixed 2-D sincos code, through a learned (D, D) map, to the projected patches of a
            ViT (one with a `patch_size`), so that cross-attention reads where a patch lies.
        patch_position_init (`float`, *optional*, defaults to 1.0):
            That map starts as this multiple of the identity (0: a checkpoint's answers unchanged at first).
        freeze_vision / freeze_language_model (`bool`, *optional*, defaults to False):
            Recorded so a checkpoint says how it was trained; training reads them.
    """

    model_type = "mmchat"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        cross_attention_layers: list[int] | None = None,
        cross_attention_every: int = 1,
        cross_attention_heads: int | None = None,
        cross_attention_mlp_ratio: int = 4,
        cross_attention_gate_init: float = 0.0,
        patch_position_code: bool = False,
        patch_position_init: float = 1.0,
        freeze_vision: bool = False,
        freeze_language_model: bool = False,
        **kwargs: Any,
    ):
        self.vision_config = _as_config(vision_config, default_type="vit")
        self.text_config = _as_config(text_config, default_type="llama")

        n_layers = self.text_config.num_hidden_layers
        if cross_attention_every < 1:
            raise ValueError(f"cross_attention_every must be >= 1, got {cross_attention_every}")
        if cross_attention_layers is None:
            cross_attention_layers = list(range(0, n_layers, cross_attention_every))
        cross_attention_layers = sorted(int(i) for i in cross_attention_layers)
        if not cross_attention_layers:
            raise ValueError("cross_attention_layers is empty: the image would never be seen")
        if cross_attention_layers[0] < 0 or cross_attention_layers[-1] >= n_layers:
            raise ValueError(
                f"cross_attention_layers {cross_attention_layers} must lie in [0, {n_layers - 1}] "
                f"(the LM has {n_layers} decoder layers)"
            )
        self.cross_attention_layers = cross_attention_layers
        self.cross_attention_every = cross_attention_every
        heads = cross_attention_heads or self.text_config.num_attention_heads
        if self.text_config.hidden_size % heads:
            raise ValueError(
                f"cross_attention_heads={heads} must divide the LM width {self.text_config.hidden_size}"
            )
        self.cross_attention_heads = heads
        self.cross_attention_mlp_ratio = cross_attention_mlp_ratio
        self.cross_attention_gate_init = cross_attention_gate_init
        if patch_position_code and not hasattr(self.vision_config, "patch_size"):
            raise ValueError(
                f"patch_position_code needs a ViT-like vision encoder with a patch_size; "
                f"{self.vision_config.model_type} has none"
            )
        self.patch_position_code = patch_position_code
        self.patch_position_init = patch_position_init
        self.freeze_vision = freeze_vision
        self.freeze_language_model = freeze_language_model
        # Generation reads these from the top-level config.
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(key, getattr(self.text_config, key, None))
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        return self.text_config


def _as_config(config: dict | PretrainedConfig | None, default_type: str) -> PretrainedConfig:
    if isinstance(config, PretrainedConfig):
        return config
    config = dict(config or {})
    return AutoConfig.for_model(config.pop("model_type", default_type), **config)
