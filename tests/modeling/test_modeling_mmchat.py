"""The fusion model: shapes, the zero-gate invariant, KV cache, save/load, Auto classes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText

from mmchat.modeling import MMChatConfig, MMChatForConditionalGeneration
from mmchat.serving.families.mmchat import MMChatAdapter
from mmchat.training.factory import TINY_CORPUS, TINY_TEXT, TINY_VISION, build_model_and_processor, build_tiny


@pytest.fixture
def model() -> MMChatForConditionalGeneration:
    return build_tiny(seed=0)[0].eval()


def open_gates(model: MMChatForConditionalGeneration, value: float = 1.0) -> None:
    with torch.no_grad():
        for block in model.cross_attention_blocks():
            block.attn_gate.fill_(value)
            block.mlp_gate.fill_(value)


def inputs(batch: int = 2, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(10, 200, (batch, length), generator=g),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=g),
    }


def test_forward_shapes_and_cross_attention_maps(model):
    x = inputs()
    out = model(**x, output_cross_attentions=True)
    assert out.logits.shape == (2, 7, model.config.text_config.vocab_size)
    n_patches = (32 // 8) ** 2 + 1  # + CLS
    assert len(out.cross_attentions) == len(model.config.cross_attention_layers)
    for w in out.cross_attentions:
        assert w.shape == (2, model.config.cross_attention_heads, 7, n_patches)
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))  # a distribution over patches

def test_kept_logits_keep_the_same_positions_cross_attention_maps(model):
    """With `logits_to_keep` k, the maps are those of the last k positions only, as in the full maps."""
    open_gates(model)
    x = inputs()
    with torch.no_grad():
        full = model(**x, output_cross_attentions=True)
        last = model(**x, output_cross_attentions=True, logits_to_keep=2)
    torch.testing.assert_close(last.logits, full.logits[:, -2:])
    for kept, every in zip(last.cross_attentions, full.cross_attentions, strict=True):
        assert kept.shape == (2, model.config.cross_attention_heads, 2, every.shape[-1])
        torch.testing.assert_close(kept, every[:, :, -2:])



def test_closed_gates_leave_the_language_model_unchanged(model):
    x = inputs()
    with torch.no_grad():
        text_only = model(input_ids=x["input_ids"]).logits
        lm_alone = model.language_model(input_ids=x["input_ids"]).logits
        with_image = model(**x).logits
    assert torch.equal(with_image, text_only)
    assert torch.equal(with_image, lm_alone)


def test_open_gates_make_the_image_matter(model):
    open_gates(model)
    x = inputs()
    other = inputs(seed=1)["pixel_values"]
    with torch.no_grad():
        a = model(**x).logits
        b = model(input_ids=x["input_ids"], pixel_values=other).logits
        text_only = model(input_ids=x["input_ids"]).logits
    assert (a - b).abs().max() > 1e-3
    assert (a - text_only).abs().max() > 1e-3


def test_configured_gate_init_opens_the_gates_from_the_start(tmp_path):
    """`cross_attention_gate_init` reaches every gate (the LM's own init must not reset it)."""
    torch.manual_seed(0)
    config = MMChatConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, cross_attention_gate_init=0.5)
    model = MMChatForConditionalGeneration(config).eval()
    assert all(b.attn_gate.item() == 0.5 and b.mlp_gate.item() == 0.5 for b in model.cross_attention_blocks())
    x = inputs()
    with torch.no_grad():
        a = model(**x).logits
        b = model(input_ids=x["input_ids"], pixel_values=inputs(seed=1)["pixel_values"]).logits
    assert (a - b).abs().max() > 1e-3


def test_generate_with_cache_matches_without_and_encodes_the_image_once(model):
    open_gates(model)
    x = inputs()
    calls = []
    model.vision_model.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        cached = model.generate(**x, max_new_tokens=6, do_sample=False, eos_token_id=None)
        assert len(calls) == 1  # once per image, not per token
        uncached = model.generate(**x, max_new_tokens=6, do_sample=False, eos_token_id=None, use_cache=False)
    assert cached.shape == (2, 7 + 6)
    assert torch.equal(cached, uncached)


def test_text_only_generate_works(model):
    with torch.no_grad():
        out = model.generate(input_ids=inputs()["input_ids"], max_new_tokens=3, do_sample=False, eos_token_id=None)
    assert out.shape == (2, 10)


def test_save_load_round_trip_through_auto_classes(model, tmp_path):
    open_gates(model, 0.5)
    model.save_pretrained(tmp_path)
    for auto in (AutoModel, AutoModelForImageTextToText):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, MMChatForConditionalGeneration)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs()).logits, model(**inputs()).logits)


def test_config_validates_fusion_layers():
    with pytest.raises(ValueError, match="must lie in"):
        MMChatConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, cross_attention_layers=[0, 5])
    with pytest.raises(ValueError, match="divide"):
        MMChatConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, cross_attention_heads=3)
    config = MMChatConfig(vision_config=TINY_VISION, text_config={**TINY_TEXT, "num_hidden_layers": 4},
                          cross_attention_every=2)
    assert config.cross_attention_layers == [0, 2]


def test_training_step_reduces_loss_on_a_batch(model):
    """The fused model learns: a few steps on one batch lower its loss (the gates open)."""
    model.train()
    x = inputs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**x, labels=x["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8
    assert any(block.attn_gate.abs().item() > 0 for block in model.cross_attention_blocks())


def test_a_cnn_vision_tower_gives_placed_cells_and_an_attention_grid(tmp_path):
    """A ResNet's (B, C, h, w) map is read as h*w cells, each knowing where it is."""
    cnn = dict(model_type="resnet", embedding_size=8, hidden_sizes=[16, 64], depths=[1, 1],
               layer_type="basic", downsample_in_first_stage=False, image_size=32)
    torch.manual_seed(0)
    model, processor = build_model_and_processor(cnn, TINY_TEXT, TINY_CORPUS)
    model.eval()
    open_gates(model)
    x = inputs()
    out = model(**x, output_cross_attentions=True)
    assert out.cross_attentions[0].shape[-1] == (32 // 8) ** 2  # a 4 x 4 map, no CLS
    # Cells must say where they are (left/right/above/below): in a flat image they differ only
    # by the position code (and the padding at the borders).
    flat = torch.zeros(1, 3, 32, 32)
    cells = model.encode_images(flat).image_states[0]  # (16, D)
    assert not torch.allclose(cells[0], cells[3])

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = MMChatForConditionalGeneration.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(**x).logits, out.logits)
    adapter = MMChatAdapter(reloaded, processor)
    prompt = adapter.inputs(Image.new("RGB", (40, 40), "red"), "what color is it?", [])
    grid = adapter.attention_grid(prompt, torch.tensor([5, 6]))
    assert grid.shape == (4, 4) and grid.max() == 1.0


def test_patch_position_code_tells_patches_apart_by_where_they_lie(model, tmp_path):
    """With the ViT's own position embedding zeroed, a flat image gives every patch the same
    features; the code makes each patch's row and column readable by a linear map."""
    with torch.no_grad():
        model.vision_model.embeddings.position_embeddings.zero_()
    model.save_pretrained(tmp_path)
    flat = torch.zeros(1, 3, 32, 32)
    plain = model.encode_images(flat).image_states[0, 1:]  # (16, D): a 4 x 4 grid after the CLS token
    assert torch.allclose(plain, plain[:1].expand_as(plain), atol=1e-5)

    config = MMChatConfig.from_pretrained(tmp_path)
    config.patch_position_code = True  # added to a checkpoint that had none
    coded = MMChatForConditionalGeneration.from_pretrained(tmp_path, config=config).eval()
    states = coded.encode_images(flat).image_states[0]
    torch.testing.assert_close(states[0], model.encode_images(flat).image_states[0, 0])  # CLS lies nowhere
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    where = torch.stack([rows.flatten(), cols.flatten()], 1)  # (16, 2)
    features = torch.cat([states[1:], torch.ones(16, 1)], 1).detach().double()
    fit = features @ torch.linalg.lstsq(features, where.double(), driver="gelsd").solution  # rank 6 < 65
    torch.testing.assert_close(fit, where.double(), atol=1e-6, rtol=0)

    coded.save_pretrained(tmp_path / "coded")
    reloaded = MMChatForConditionalGeneration.from_pretrained(tmp_path / "coded").eval()
    x = inputs()
    torch.testing.assert_close(reloaded(**x).logits, coded(**x).logits)


def test_patch_position_code_at_zero_keeps_a_checkpoints_answers(model, tmp_path):
    open_gates(model)
    model.save_pretrained(tmp_path)
    config = MMChatConfig.from_pretrained(tmp_path)
    config.patch_position_code, config.patch_position_init = True, 0.0
    coded = MMChatForConditionalGeneration.from_pretrained(tmp_path, config=config).eval()
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(coded(**x).logits, model(**x).logits)
    coded.train()
    coded(**x, labels=x["input_ids"]).loss.backward()
    assert coded.patch_position.weight.grad.abs().sum() > 0  # it can still learn from there


def test_patch_position_code_needs_a_patch_grid():
    cnn = dict(model_type="resnet", hidden_sizes=[16, 64], depths=[1, 1])
    with pytest.raises(ValueError, match="patch_size"):
        MMChatConfig(vision_config=cnn, text_config=TINY_TEXT, patch_position_code=True)


def test_position_probe_tells_a_model_that_keeps_place_from_one_that_lost_it(tmp_path):
    """The probe behind the patch position code: near the centre guess without any position, near
    zero with the code."""
    from mmchat.evaluation.position_probe import probe_error

    model, processor = build_tiny(seed=0)
    with torch.no_grad():
        model.vision_model.embeddings.position_embeddings.zero_()
    lost = probe_error(model.eval(), processor, scenes=60)  # 720 fitted patches for 65 unknowns
    model.save_pretrained(tmp_path)
    config = MMChatConfig.from_pretrained(tmp_path)
    config.patch_position_code = True
    coded = MMChatForConditionalGeneration.from_pretrained(tmp_path, config=config).eval()
    kept = probe_error(coded, processor, scenes=60)
    assert lost[2] == kept[2] == 4  # a 4 x 4 grid
    assert min(lost[:2]) > 0.9 and max(kept[:2]) < 0.1, (lost, kept)  # guessing the centre errs by 1.0
