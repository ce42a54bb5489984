"""BLIP VQA and Llama 3.2 Vision (Mllama) through the same loader, engine and evaluation.

Each family gets a tiny random model built here from a small config of that family, with a
processor built offline (a tokenizer made with `tokenizers`, the family's image processor at a
small size), saved to a temporary folder and loaded back with `load_model` in every mode.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessor,
    MllamaProcessor,
    PreTrainedTokenizerFast,
)

from mmchat.data.vqa import VQAExample
from mmchat.evaluation.evaluate import predict
from mmchat.serving.engine import ChatEngine, GenerationSettings
from mmchat.serving.families import FAMILIES, FamilyAdapter, Turn
from mmchat.serving.families.blip import BlipAdapter
from mmchat.serving.families.mllama import MllamaAdapter
from mmchat.serving.loading import load_model

MODES = ("none", "nf4", "int8")
FAMILY_NAMES = ("blip", "mllama")
GREEDY = GenerationSettings(max_new_tokens=6)

CORPUS = [
    "what colour is the square",
    "how many shapes are there",
    "the square is red",
    "there are two shapes",
    "a blue disc on grey",
    "is there a circle in the picture",
    "and what about the disc",
    "yes no red green blue left right top bottom",
]

# Llama 3 special tokens the Mllama processor and chat template use.
LLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
# The Llama 3.2 Vision Instruct layout, without the tool and date handling of the real template.
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]


def mllama_processor(vocab_size: int = 300, whole_text_tokens: bool = False) -> MllamaProcessor:
    """A byte-level BPE tokenizer like Llama 3's, trained on a few sentences, and 28 px tiles.

    `whole_text_tokens`: no byte alphabet, so every token is whole ASCII text (no lone UTF-8 bytes) and
    a random model's answers are words that stream in several pieces rather than undecodable bytes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = [] if whole_text_tokens else pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=LLAMA_SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>"
    )
    image_processor = MllamaImageProcessor(size={"height": 28, "width": 28}, max_image_tiles=4)
    return MllamaProcessor(image_processor, fast, chat_template=LLAMA_TEMPLATE)


def mllama_model(processor: MllamaProcessor) -> MllamaForConditionalGeneration:
    """Widths >= 64: bitsandbytes quantizes in blocks of 64."""
    token_id = processor.tokenizer.convert_tokens_to_ids
    config = MllamaConfig(
        vision_config=dict(
            hidden_size=64,
            attention_heads=2,
            num_hidden_layers=2,
            num_global_layers=1,
            intermediate_size=128,
            intermediate_layers_indices=[0],
            vision_output_dim=128,  # hidden_size * (1 + len(intermediate_layers_indices))
            image_size=28,
            patch_size=14,
            max_num_tiles=4,
        ),
        text_config=dict(
            vocab_size=len(processor.tokenizer),
            hidden_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
            num_hidden_layers=3,
            cross_attention_layers=[1],
            intermediate_size=256,
            max_position_embeddings=512,
            bos_token_id=token_id("<|begin_of_text|>"),
            eos_token_id=[token_id("<|eot_id|>"), token_id("<|end_of_text|>")],
            pad_token_id=token_id("<|finetune_right_pad_id|>"),
        ),
        image_token_index=token_id("<|image|>"),
    )
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():  # open the zero-initialised cross-attention gates, so the image matters
        for layer_idx in config.text_config.cross_attention_layers:
            layer = model.model.language_model.layers[layer_idx]
            layer.cross_attn_attn_gate.fill_(1.0)
            layer.cross_attn_mlp_gate.fill_(1.0)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    return model


def blip_processor() -> BlipProcessor:
    """A word-piece vocabulary of the corpus' words and letters, with BLIP's [DEC] start token."""
    words = sorted({w for sentence in CORPUS for w in sentence.split()})
    vocab = {token: i for i, token in enumerate(BERT_SPECIALS + words + list("abcdefghijklmnopqrstuvwxyz"))}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    return BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)


def blip_model(processor: BlipProcessor) -> BlipForQuestionAnswering:
    tokenizer = processor.tokenizer
    config = BlipConfig(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
            initializer_range=0.02,  # BLIP's default, 1e-10, leaves every image's tokens at about zero
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            encoder_hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
    )
    torch.manual_seed(0)
    return BlipForQuestionAnswering(config)


BUILDERS = {"blip": (blip_processor, blip_model), "mllama": (mllama_processor, mllama_model)}
ADAPTERS = {"blip": BlipAdapter, "mllama": MllamaAdapter}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """family -> folder; the folder's name says nothing of the family, the config does."""
    paths = {}
    for name, (build_processor, build_model) in BUILDERS.items():
        processor = build_processor()
        path = tmp_path_factory.mktemp("checkpoint")
        build_model(processor).save_pretrained(path)
        processor.save_pretrained(path)
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="module")
def loaded(checkpoints):
    """Each (family, mode) loaded once for the whole module."""
    cache: dict[tuple[str, str], FamilyAdapter] = {}

    def get(family: str, mode: str) -> FamilyAdapter:
        if mode != "none":
            pytest.importorskip("bitsandbytes")
        if (family, mode) not in cache:
            cache[family, mode] = load_model(checkpoints[family], quantization=mode, device="cpu")
        return cache[family, mode]

    return get


def picture(width: int = 64, height: int = 64) -> Image.Image:
    """A red square and a blue disc on grey."""
    a = np.full((height, width, 3), 200, np.uint8)
    a[8:24, 8:24] = (220, 40, 40)
    yy, xx = np.mgrid[:height, :width]
    a[(yy - height // 2) ** 2 + (xx - width // 2) ** 2 < 100] = (40, 80, 220)
    return Image.fromarray(a)


def first_step_scores(adapter: FamilyAdapter) -> torch.Tensor:
    """The scores of the first answer token, as `generate` computes them, in float32."""
    inputs = adapter.inputs(picture(), "what colour is the square", [])
    with torch.inference_mode():
        out = adapter.model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    return out.scores[0][0].float()


def test_both_families_are_registered_by_model_type():
    assert FAMILIES["blip"] is BlipAdapter and FAMILIES["mllama"] is MllamaAdapter


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_mode_loads_the_family_and_streams_a_growing_answer(loaded, family, mode):
    adapter = loaded(family, mode)
    assert type(adapter) is ADAPTERS[family] and adapter.quantization == mode
    steps = list(ChatEngine(adapter).stream(picture(), "what colour is the square", settings=GREEDY))
    assert steps[-1], f"{family} {mode}: empty answer"
    assert len(steps) > 1, f"{family} {mode}: the answer came in one piece, not streamed"
    assert all(later.startswith(earlier) for earlier, later in zip(steps, steps[1:]))


@pytest.mark.parametrize("mode, min_cosine, max_share", [("nf4", 0.95, 0.30), ("int8", 0.99, 0.40)])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_quantized_models_are_smaller_and_score_like_full_precision(loaded, family, mode, min_cosine, max_share):
    full, quantized = loaded(family, "none"), loaded(family, mode)
    share = quantized.model.get_memory_footprint() / full.model.get_memory_footprint()
    assert share < max_share, f"{family} {mode} uses {share:.0%} of the fp32 memory"
    ref, got = first_step_scores(full), first_step_scores(quantized)
    cosine = torch.nn.functional.cosine_similarity(ref, got, dim=0).item()
    assert cosine > min_cosine, f"{family} {mode}: first-token scores drifted, cosine {cosine:.4f}"


def test_mllama_int8_keeps_the_projector_and_lm_head_unquantized(loaded):
    import bitsandbytes as bnb

    model = loaded("mllama", "int8").model
    # The projector's 5-D input breaks bitsandbytes' int8 matmul; the LM head is transformers' default skip.
    assert type(model.model.multi_modal_projector) is torch.nn.Linear
    assert type(model.lm_head) is torch.nn.Linear
    assert isinstance(model.model.language_model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
    assert isinstance(model.model.vision_model.transformer.layers[0].mlp.fc1, bnb.nn.Linear8bitLt)


def test_mllama_follow_up_is_asked_after_the_first_turn_with_the_image_in_view(loaded):
    adapter = loaded("mllama", "none")
    engine = ChatEngine(adapter)
    first = engine.answer(picture(), "what colour is the square", settings=GREEDY)
    history = [Turn("what colour is the square", first)]
    inputs = adapter.inputs(picture(), "and what about the disc", history)
    prompt = adapter.tokenizer.decode(inputs["input_ids"][0])
    # One image, in the first user turn; the earlier question and answer come before the new question.
    assert prompt.count("<|image|>") == 1 and prompt.count("<|begin_of_text|>") == 1
    assert prompt.index("<|image|>") < prompt.index("what colour is the square") < prompt.index(first)
    assert prompt.index(first) < prompt.index("and what about the disc")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # Every token after the image, the follow-up included, may attend to it.
    image_at = (inputs["input_ids"][0] == adapter.processor.image_token_id).nonzero().item()
    assert inputs["cross_attention_mask"][0, image_at:, 0].any(dim=-1).all()
    assert engine.answer(picture(), "and what about the disc", history, settings=GREEDY)


def test_blip_answers_each_question_on_its_own(loaded, monkeypatch):
    adapter = loaded("blip", "none")
    engine = ChatEngine(adapter)
    assert "each question answered on its own" in engine.describe()
    alone = engine.answer(picture(), "how many shapes are there", settings=GREEDY)
    seen: list[list[Turn]] = []
    original = adapter.inputs
    monkeypatch.setattr(adapter, "inputs", lambda image, q, history: seen.append(history) or original(image, q, history))
    after = engine.answer(picture(), "how many shapes are there", [Turn("what colour is the square", "red")], GREEDY)
    assert seen and all(history == [] for history in seen)
    assert after == alone


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_evaluation_batch_gives_the_chat_answers(loaded, family, tmp_path, monkeypatch):
    adapter = loaded(family, "none")
    padded: list[bool] = []
    generate = adapter.model.generate
    monkeypatch.setattr(
        adapter.model,
        "generate",
        lambda **kw: padded.append(not bool(kw["attention_mask"].all())) or generate(**kw),
    )
    questions = ["what colour is the square", "is there a circle in the picture", "how many shapes are there"]
    sizes = [(64, 64), (80, 48), (48, 80)]  # different tile layouts for Mllama in one batch
    examples = []
    for i, (question, size) in enumerate(zip(questions, sizes)):
        path = tmp_path / f"{i}.png"
        picture(*size).save(path)
        examples.append(VQAExample(100 + i, i, path, question, [], None, None, None))
    predictions = predict(ChatEngine(adapter), examples, batch_size=3, max_new_tokens=6, progress=False)
    assert [p["question_id"] for p in predictions] == [100, 101, 102]
    # Batched and padded, each answer is the one the chat gives to that question alone.
    engine = ChatEngine(adapter)
    chat = [engine.answer(picture(*size), q, settings=GREEDY) for q, size in zip(questions, sizes)]
    assert [p["answer"] for p in predictions] == chat
    assert all(chat)
    if family == "blip":  # its decoder cannot mask a question's padding: none may reach it
        assert padded and not any(padded)


class StopAfter(threading.Event):
    """A Stop pressed after `checks` looks at it: mid-answer, whatever the machine's speed."""

    def __init__(self, checks: int):
        super().__init__()
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        return self.checks < 0 or super().is_set()


def generated(adapter: FamilyAdapter, image: Image.Image, question: str, history: list[Turn], max_new_tokens: int) -> str:
    """The answer of HF `generate` alone, the reference the engine's steps must match."""
    inputs = adapter.inputs(image, question, history)
    with torch.inference_mode():
        out = adapter.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return adapter.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_mllama_requests_share_steps_and_each_gets_what_generate_gives_alone(loaded):
    """Llama 3.2 Vision runs step by step in the scheduler's batches: requests join a running batch,
    a follow-up starts from its conversation's cached image and turns, Stop ends one row."""
    adapter = loaded("mllama", "none")
    settings = GenerationSettings(max_new_tokens=8)
    asked = [  # different tile layouts, one follow-up with its history
        (picture(64, 64), "what colour is the square", []),
        (picture(80, 48), "is there a circle", []),
        (picture(48, 80), "and the disc", [Turn("what colour is the square", "red")]),
        (picture(64, 64), "where is the disc", []),
    ]
    expected = [generated(adapter, image, q, h, 8) for image, q, h in asked]
    assert len(set(expected)) > 1, "the tiny model gives one answer to everything: the test would prove nothing"

    engine = ChatEngine(adapter)
    vision = []
    hook = adapter.model.model.vision_model.register_forward_hook(lambda m, i, o: vision.append(1))
    first = engine.submit(*asked[0][:2], asked[0][2], settings)
    stream = iter(first)
    next(stream)  # the first row is decoding now; the others join it
    stops = [None, None, StopAfter(checks=10)]
    later = [engine.submit(image, q, h, settings, stop_event=stop) for (image, q, h), stop in zip(asked[1:], stops)]
    answers = [first.text()] + [reply.text() for reply in later]
    assert answers[:3] == expected[:3]
    assert later[2].finish_reason == "stopped" and 0 < len(later[2].request.tokens) < 8
    assert expected[3].startswith(answers[3])
    assert engine.scheduler.steps < sum(len(r.request.tokens) for r in [first, *later])  # rows shared steps

    # A follow-up about the first picture: neither the image nor the first turn is read again.
    history = [Turn(asked[0][1], answers[0])]
    reference = generated(adapter, asked[0][0], "and the disc", history, 8)
    seen = len(vision)
    assert engine.answer(asked[0][0], "and the disc", history, settings) == reference
    assert len(vision) == seen
    assert engine.scheduler.prefixes.entries.hits >= 1
    hook.remove()
    engine.close()


@pytest.mark.parametrize("family, size, wider", [("mllama", (100, 40), True), ("mllama", (40, 100), False)])
def test_mllama_attention_map_keeps_the_tiles_in_place(loaded, family, size, wider):
    adapter = loaded(family, "none")
    image = picture(*size)
    inputs = adapter.inputs(image, "what colour is the square", [])
    answer = ChatEngine(adapter).answer(image, "what colour is the square", settings=GREEDY)
    answer_ids = adapter.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    grid = adapter.attention_grid(inputs, answer_ids)
    assert grid is not None and np.isfinite(grid).all() and grid.min() == 0 and grid.max() == 1
    assert (grid.shape[1] > grid.shape[0]) == wider, f"a {size} image gave a {grid.shape} map"
    # The weights are read with eager attention; the model goes back to its own implementation.
    assert adapter.model.config.text_config._attn_implementation != "eager"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_attention_overlay_is_drawn_over_the_image(loaded, family):
    engine = ChatEngine(loaded(family, "none"))
    answer = engine.answer(picture(), "what colour is the square", settings=GREEDY)
    overlay = engine.attention_overlay(picture(), "what colour is the square", answer)
    assert overlay is not None and overlay.size == picture().size
    assert np.asarray(overlay.convert("RGB")).tolist() != np.asarray(picture()).tolist()


def test_mllama_base_checkpoint_without_chat_template_uses_the_plain_prompt(loaded):
    import copy

    chat = loaded("mllama", "none")
    processor = copy.copy(chat.processor)
    processor.chat_template = None  # as the base (non-instruct) checkpoints ship
    adapter = MllamaAdapter(chat.model, processor)
    inputs = adapter.inputs(picture(), "and what about the disc", [Turn("what colour is the square", "red")])
    prompt = adapter.tokenizer.decode(inputs["input_ids"][0])
    assert prompt == "<|image|><|begin_of_text|>Question: what colour is the square\nAnswer: red\n" + (
        "Question: and what about the disc\nAnswer:"
    )
    assert ChatEngine(adapter).answer(picture(), "what colour is the square", settings=GREEDY)


def test_mllama_a_request_that_breaks_a_shared_step_fails_alone(loaded, monkeypatch):
    """The batch's prefill fails (here: the follow-up's longer prompt "runs out of memory"); the
    others are answered alone."""
    adapter = loaded("mllama", "none")
    settings = GenerationSettings(max_new_tokens=6)
    asked = [
        (picture(64, 64), "what colour is the square", []),
        (picture(48, 80), "and the disc", [Turn("what colour is the square", "red"), Turn("is it big", "yes")]),
        (picture(80, 48), "is there a circle", []),
    ]
    expected = [generated(adapter, image, q, h, 6) for image, q, h in asked]
    too_long = len(adapter.prompt_ids(asked[1][1], asked[1][2]))

    step = adapter.step

    def failing(input_ids, *args, **kwargs):
        if input_ids.shape[1] >= too_long:
            raise RuntimeError("CUDA out of memory (simulated)")
        return step(input_ids, *args, **kwargs)

    monkeypatch.setattr(adapter, "step", failing)
    engine = ChatEngine(adapter)
    hold = threading.Event()
    held = threading.Thread(target=engine.scheduler.call, args=(hold.wait,))
    held.start()
    replies = [engine.submit(image, q, h, settings) for image, q, h in asked]
    hold.set()
    assert replies[0].text() == expected[0] and replies[2].text() == expected[2]
    with pytest.raises(RuntimeError, match="out of memory"):
        replies[1].text()
    held.join()
    engine.close()


def test_blip_requests_waiting_together_share_one_generate_and_each_answers_as_alone(loaded, monkeypatch):
    """Questions of different lengths share one `generate`, padded; the padding is masked in the
    answer decoder too, so each answer and heat-map is the one the question gets alone."""
    adapter = loaded("blip", "none")
    settings = GenerationSettings(max_new_tokens=6)
    questions = ["what colour is the square", "what colour is the circle", "how many shapes are there", "is it red"]
    assert len({len(adapter.tokenizer(q)["input_ids"]) for q in questions}) > 1, "the test needs unequal lengths"
    images = [picture(64, 64), picture(80, 48), picture(48, 80), picture(64, 64)]
    alone = ChatEngine(adapter)
    expected = [alone.answer(image, q, settings=settings) for image, q in zip(images, questions)]
    maps = [alone.answer_attention(image, q, a) for image, q, a in zip(images, questions, expected)]
    alone.close()

    batches = []
    generate = adapter.generate

    def counted(inputs, *args, **kwargs):
        batches.append((inputs["input_ids"].shape[0], bool(inputs["attention_mask"].all())))
        return generate(inputs, *args, **kwargs)

    monkeypatch.setattr(adapter, "generate", counted)
    engine = ChatEngine(adapter)
    hold = threading.Event()
    held = threading.Thread(target=engine.scheduler.call, args=(hold.wait,))
    held.start()  # the scheduler's thread waits here while every request queues
    replies = [engine.submit(image, q, [], settings) for image, q in zip(images, questions)]
    hold.set()
    answers = [reply.text() for reply in replies]
    held.join()
    assert batches == [(4, False)]  # one generate, padded
    assert answers == expected
    for image, q, a, alone_map in zip(images, questions, answers, maps):
        assert torch.allclose(engine.answer_attention(image, q, a), alone_map, atol=1e-5)
    engine.close()


def test_blip_stop_and_a_failing_request_in_a_shared_generate_reach_only_their_own(loaded, monkeypatch):
    """In one padded `generate`: Stop ends its row with what it had, the others run on; a batch that
    fails (here: the longest question "runs out of memory") is answered row by row, and only the
    request that fails alone sees the error."""
    adapter = loaded("blip", "none")
    settings = GenerationSettings(max_new_tokens=6)
    questions = ["what colour is the square", "is it red", "how many shapes are there in the picture"]
    images = [picture(64, 64), picture(80, 48), picture(48, 80)]
    alone = ChatEngine(adapter)
    expected = [alone.answer(image, q, settings=settings) for image, q in zip(images, questions)]
    alone.close()
    too_long = len(adapter.tokenizer(questions[2])["input_ids"])
    generate = adapter.generate

    def failing(inputs, *args, **kwargs):
        if inputs["input_ids"].shape[1] >= too_long:
            raise RuntimeError("CUDA out of memory (simulated)")
        return generate(inputs, *args, **kwargs)

    monkeypatch.setattr(adapter, "generate", failing)
    engine = ChatEngine(adapter)
    for stops in ([None, StopAfter(checks=2), None], [None, None, None]):
        hold = threading.Event()
        held = threading.Thread(target=engine.scheduler.call, args=(hold.wait,))
        held.start()
        replies = [engine.submit(image, q, [], settings, stop_event=stop) for image, q, stop in zip(images, questions, stops)]
        hold.set()
        assert replies[0].text() == expected[0]
        answer = replies[1].text()
        if stops[1] is not None:
            assert replies[1].finish_reason == "stopped" and expected[1].startswith(answer)
        else:
            assert answer == expected[1]
        with pytest.raises(RuntimeError, match="out of memory"):
            replies[2].text()
        held.join()
    engine.close()


def blip_generated(adapter: FamilyAdapter, image: Image.Image, question: str, max_new_tokens: int) -> str:
    """BLIP's own `generate` alone (ViT, question encoder, answer decoder), the engine's reference."""
    with torch.inference_mode():
        out = adapter.model.generate(**adapter.inputs(image, question, []), max_new_tokens=max_new_tokens, do_sample=False)
    return adapter.tokenizer.decode(out[0], skip_special_tokens=True).strip()


def _counted(fn, calls: list):
    def run(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return run


@pytest.mark.parametrize("mode", ["none", "nf4"])
def test_blip_reads_each_image_once_and_records_its_heat_map_while_answering(loaded, mode, monkeypatch):
    adapter = loaded("blip", mode)
    settings = GenerationSettings(max_new_tokens=6)
    image, asked = picture(), ["what colour is the square", "how many shapes are there", "is it red"]
    expected = [blip_generated(adapter, image, q, 6) for q in asked]
    assert all(expected)
    engine = ChatEngine(adapter)
    vit, pixels = [], []
    hook = adapter.model.vision_model.register_forward_hook(lambda *_: vit.append(1))
    image_processor = adapter.processor.image_processor
    monkeypatch.setattr(image_processor, "preprocess", _counted(image_processor.preprocess, pixels))
    replies = [engine.submit(image, q, [], settings) for q in asked]
    assert [reply.text() for reply in replies] == expected  # token for token what BLIP's generate gives
    assert len(vit) == 1, "the questions after the first read the kept ViT tokens"
    assert len(pixels) == 1, "the image's pixels are processed once, for the ViT, not at every question"
    monkeypatch.undo()
    engine.answer(picture(80, 48), asked[0], settings=settings)
    assert len(vit) == 2  # another image is read
    engine.release(image)
    engine.answer(image, asked[0], settings=settings)
    assert len(vit) == 3  # released: read again
    hook.remove()

    second = []
    monkeypatch.setattr(adapter, "answer_attention", lambda *a: second.append(1))
    recorded = [engine.answer_attention(image, q, a) for q, a in zip(asked, expected)]  # (A, 1 + N) each
    overlay = engine.attention_overlay(image, asked[0], expected[0])
    assert not second, "no second pass"
    monkeypatch.undo()
    for q, reply, weights in zip(asked, replies, recorded):
        again = adapter.answer_attention(adapter.inputs(image, q, []), torch.tensor(reply.answer_tokens))
        assert weights.shape == again.shape and torch.allclose(weights, again, atol=2e-3 if mode == "nf4" else 1e-5)
    assert not torch.allclose(recorded[0].mean(0), recorded[1].mean(0), atol=1e-4), "each question has its own map"
    assert overlay is not None and overlay.size == image.size
    engine.close()


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_quantized_mllama_steps_give_what_its_generate_gives(loaded, mode):
    adapter = loaded("mllama", mode)
    asked = [(picture(64, 64), "what colour is the square", []), (picture(48, 80), "and the disc", [Turn("is it red", "yes")])]
    engine = ChatEngine(adapter)
    settings = GenerationSettings(max_new_tokens=8)
    assert [engine.answer(image, q, h, settings) for image, q, h in asked] == [
        generated(adapter, image, q, h, 8) for image, q, h in asked
    ]
    engine.close()


@pytest.mark.parametrize("mode", ["none", "nf4"])
def test_mllama_heat_map_comes_from_the_answering_pass_and_matches_a_second_pass(loaded, mode, monkeypatch):
    adapter = loaded("mllama", mode)
    engine = ChatEngine(adapter)
    image, question, history = picture(80, 48), "and the disc", [Turn("what colour is the square", "red")]
    reply = engine.submit(image, question, history, GenerationSettings(max_new_tokens=6))
    answer = reply.text()
    second = []
    monkeypatch.setattr(adapter, "answer_attention", lambda *a: second.append(1))
    recorded = engine.answer_attention(image, question, answer, history)  # (A, N), while answering
    overlay = engine.attention_overlay(image, question, answer, history)
    assert not second, "no second pass"
    monkeypatch.undo()
    inputs = engine._fit_history(engine.check(image, question)[0], question, history)
    # The tokens chosen (a random model's text need not tokenize back to them)
    again = adapter.answer_attention(inputs, torch.tensor(reply.answer_tokens))
    assert recorded.shape == again.shape and torch.allclose(recorded, again, atol=2e-3 if mode == "nf4" else 1e-4)
    assert overlay.size == image.size
    engine.close()
