"""MMChatForConditionalGeneration: a ViT whose patches a decoder-only LM reads by cross-attention.

    pixel_values (B, 3, H, W) -> vision_model -> (B, N, Dv) -> projector -> (B, N, D)
    input_ids (B, T) -> LM decoder layers, each listed in config.cross_attention_layers preceded by
    a gated cross-attention block over the (B, N, D) patches -> logits (B, T, V)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_mmchat import MMChatConfig
from .fusion import CrossAttentionCache, FusedDecoderLayer, GatedCrossAttentionBlock

# Keyword arguments some vision encoders need to give patch features and nothing unused.
VISION_MODEL_KWARGS: dict[str, dict[str, Any]] = {"vit": {"add_pooling_layer": False}}


def vision_width(config: PretrainedConfig) -> int:
    """Dv: a ViT's `hidden_size`, or the channels of a CNN's last stage (`hidden_sizes[-1]`)."""
    return config.hidden_size if hasattr(config, "hidden_size") else config.hidden_sizes[-1]


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """(h*w, dim) fixed position code, row-major: sines and cosines of y and of x (as in MAE)."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (dim/4,)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    y, x = y.reshape(-1, 1) * freqs, x.reshape(-1, 1) * freqs  # (h*w, dim/4) each
    code = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)
    return nn.functional.pad(code, (0, dim - 4 * quarter))  # (h*w, dim)


class PatchPositionCode(nn.Module):
    """Says where each ViT patch lies: a fixed 2-D sincos code, centred over the grid (a constant
    part would only shift every patch alike), through a learned (D, D) map added to the projected
    patches. The ViT's own learned position embedding was not enough: in the default model as
    trained without the code, a linear probe could barely read a patch's row or column from its
    projected features (`python -m mmchat position-probe`: mean error 2.5 and 2.7 patches of 12;
    guessing the centre, 3.0), and left/right/above/below stayed at chance.
    The map starts at `init_scale` times the identity; 0 leaves a checkpoint's answers unchanged
    at first, but then nothing pulls position in (it stayed near zero over 1,000 steps)."""

    def __init__(self, dim: int, init_scale: float = 1.0):
        super().__init__()
        self.init_scale = init_scale
        self.weight = nn.Parameter(torch.empty(dim, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.eye(self.weight.shape[0]) * self.init_scale)

    def forward(self, patches: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, D = patches.shape  # N = h*w patches, after any leading tokens such as a ViT's CLS
        code = sincos_2d(h, w, D).to(patches)
        code = (code - code.mean(0)) @ self.weight.to(patches).T  # (h*w, D)
        return patches + nn.functional.pad(code, (0, 0, N - h * w, 0))  # leading tokens get none


@dataclass
class MMChatOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, T, V)
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    # per fused layer: (B, nh, T, N); with an int `logits_to_keep` k > 0, the last k positions only
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attention_cache: CrossAttentionCache | None = None


class MMChatPreTrainedModel(PreTrainedModel):
    config_class = MMChatConfig
    config: MMChatConfig
    base_model_prefix = "mmchat"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["FusedDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # The blocks inside the LM are initialised by the LM's own `_init_weights` (transformers
        # dispatches each sub-model's init), so their gates get their value in the constructor.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, PatchPositionCode):
            module.reset_parameters()  # also for a checkpoint that had no code
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif hasattr(module, "weight") and module.__class__.__name__.endswith("RMSNorm"):
            nn.init.ones_(module.weight)


class MMChatForConditionalGeneration(MMChatPreTrainedModel, GenerationMixin):
    def __init__(self, config: MMChatConfig):
        super().__init__(config)
        vision_kwargs = VISION_MODEL_KWARGS.get(config.vision_config.model_type, {})
        self.vision_model = AutoModel.from_config(config.vision_config, **vision_kwargs)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        Dv, D = vision_width(config.vision_config), config.text_config.hidden_size
        self.multi_modal_projector = nn.Sequential(nn.LayerNorm(Dv), nn.Linear(Dv, D))
        self.patch_position = PatchPositionCode(D, config.patch_position_init) if config.patch_position_code else None

        layers = self.decoder_layers()
        for i in config.cross_attention_layers:
            # Closed gates (the default): the fused model starts as exactly the LM it was built from.
            block = GatedCrossAttentionBlock(
                D, config.cross_attention_heads, config.cross_attention_mlp_ratio, config.cross_attention_gate_init
            )
            layers[i] = FusedDecoderLayer(layers[i], block, layer_idx=i)
        self.post_init()

    def decoder_layers(self) -> nn.ModuleList:
        decoder = self.language_model.get_decoder()
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"{type(self.language_model).__name__} keeps no `layers` list in its decoder; "
                "mmchat fuses Llama-style decoder-only LMs (Llama, Qwen2, Mistral, SmolLM, ...)"
            )
        return layers

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def cross_attention_blocks(self) -> list[GatedCrossAttentionBlock]:
        return [layer.cross_attn for layer in self.decoder_layers() if isinstance(layer, FusedDecoderLayer)]

    def encode_images(self, pixel_values: torch.Tensor) -> CrossAttentionCache:
        """(B, 3, H, W) -> the projected patches every fused layer attends over."""
        pixel_values = pixel_values.to(self.multi_modal_projector[0].weight.dtype)
        features = self.vision_model(pixel_values=pixel_values).last_hidden_state
        if features.ndim == 3:  # a ViT: (B, N, Dv) tokens that carry their learned position embedding
            patches = self.multi_modal_projector(features)  # (B, N, D)
            if self.patch_position is not None:
                p = self.config.vision_config.patch_size
                patches = self.patch_position(patches, pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
            return CrossAttentionCache(patches)
        # A CNN: a (B, Dv, h, w) map, one cell per patch. Nothing in a cell says where it is, so a
        # fixed 2-D position code is added: left/right/above/below need it.
        h, w = features.shape[-2:]
        patches = self.multi_modal_projector(features.flatten(2).transpose(1, 2))  # (B, h*w, D)
        return CrossAttentionCache(patches + sincos_2d(h, w, patches.shape[-1]).to(patches))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cross_attention_cache: CrossAttentionCache | None = None,
        output_cross_attentions: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> MMChatOutput:
        """`pixel_values` None and no cache: the plain LM. Give the cache back on later steps."""
        if cross_attention_cache is None and pixel_values is not None:
            cross_attention_cache = self.encode_images(pixel_values)
        recorder: list[torch.Tensor] | None = [] if output_cross_attentions else None
        out = self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            cross_attention_cache=cross_attention_cache,
            cross_attentions=recorder,
            # The maps of the positions whose logits are kept: a prompt's others are not wanted.
            cross_attentions_keep=logits_to_keep if isinstance(logits_to_keep, int) else 0,
            **kwargs,
        )
        return MMChatOutput(
            loss=out.loss,
            logits=out.logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=tuple(recorder) if recorder is not None else None,
            cross_attention_cache=cross_attention_cache,
        )

    def _update_model_kwargs_for_generation(self, outputs: MMChatOutput, model_kwargs: dict, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # Keep the image's keys/values for the next token instead of re-encoding the image.
        model_kwargs["cross_attention_cache"] = outputs.cross_attention_cache
        model_kwargs["pixel_values"] = None
        return model_kwargs
