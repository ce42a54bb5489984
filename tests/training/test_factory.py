"""Fusing a pretrained LM: its weights arrive intact, so with closed gates it says what it said."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from mmchat.training.factory import TINY_CORPUS, TINY_TEXT, TINY_VISION, build_from_pretrained
from mmchat.training.tokenizer import build_tokenizer


def test_pretrained_lm_is_copied_into_the_fused_model(tmp_path):
    tok = build_tokenizer(TINY_CORPUS, vocab_size=300)
    config = {k: v for k, v in TINY_TEXT.items() if k != "model_type"}
    torch.manual_seed(3)
    lm = AutoModelForCausalLM.from_config(LlamaConfig(**{**config, "vocab_size": len(tok)}))
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    model, processor = build_from_pretrained(TINY_VISION, str(tmp_path), cross_attention_every=2)
    assert model.config.cross_attention_layers == [0]
    assert all(block.attn_gate.item() == 0 for block in model.cross_attention_blocks())
    ids = torch.randint(0, len(tok), (2, 6))
    with torch.no_grad():
        expected = lm(input_ids=ids).logits
        got = model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32)).logits[..., : len(tok)]
    torch.testing.assert_close(got, expected)
    # The chat tokens the template needs are in the tokenizer, and the embeddings grew to hold them.
    assert processor.tokenizer.convert_tokens_to_ids("<|assistant|>") < model.config.text_config.vocab_size
    assert "<|assistant|>" in processor.prompt([{"role": "user", "content": "hi"}])
