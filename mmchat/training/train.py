"""Train an mmchat model on VQA conversations with accelerate: CPU, one GPU, or many, one code path.

    python -m mmchat train --out runs/shapes --steps 20000              # CPU smoke test or one GPU
    accelerate launch -m mmchat train --out runs/shapes --steps 20000   # DDP / FSDP / DeepSpeed
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m mmchat train ...  # 2 CPU processes
    python -m mmchat train --out runs/shapes --resume                   # continue the latest checkpoint

Across processes: `--batch-size` is per process, each process draws its own conversations (its
streams are seeded by its rank), the evaluation split is shared out and gathered, and the model is
saved from one full state dict, so the same loop runs under DDP, FSDP or DeepSpeed.

Data: ShapesVQA rendered on the fly (`--shapes-weight`), plus any VQA-layout folders given with
`--vqa-data` (easy-vqa's converted train split, or real VQA). Evaluation: VQA accuracy on a fixed
ShapesVQA split rendered from `--eval-seed` (a seed training never draws from).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.shapes import ALL_FAMILIES, FAMILIES, family_weight_list, sample_question, sample_scene, write_dataset
from ..data.vqa import VQAExample, load_vqa
from ..evaluation.evaluate import format_scores, predict
from ..evaluation.vqa_metric import score_predictions
from ..modeling.configuration_mmchat import MMChatConfig
from ..modeling.modeling_mmchat import MMChatForConditionalGeneration
from ..modeling.processing_mmchat import MMChatProcessor
from ..serving.engine import ChatEngine
from ..serving.families.mmchat import MMChatAdapter
from .align import AlignmentModel, CaptionCollator, ShapesCaptions
from .balanced import AnswerBalancedModel
from .centres import CentreModel, centre_grid
from .conversations import (
    ConversationCollator,
    Mixture,
    ShapesConversations,
    VQAConversations,
    object_count_weights,
)
from .factory import build_from_pretrained

# Model sizes, as data. "shapes-small" is the shipped default: small enough to train on a CPU.
PRESETS: dict[str, dict] = {
    "tiny": {
        "vision": dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=8),
        "text": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=128, vocab_size=512, max_position_embeddings=512),
    },
    "shapes-small": {
        "vision": dict(model_type="vit", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=512, image_size=96, patch_size=8),
        "text": dict(model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=512, vocab_size=1024, max_position_embeddings=1024),
        # A narrower MLP after each cross-attention: most of the CPU step time is in the LM side.
        "fusion": dict(cross_attention_mlp_ratio=2),
    },
    # A quarter of shapes-small's compute, for ablations on a CPU (e.g. alignment stage vs none).
    "shapes-mini": {
        "vision": dict(model_type="vit", hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                       intermediate_size=384, image_size=64, patch_size=8),
        "text": dict(model_type="llama", hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=256, vocab_size=1024, max_position_embeddings=1024),
        "fusion": dict(cross_attention_mlp_ratio=2),
    },
    # shapes-small with a small ResNet for eyes: the from-scratch ViT learned colours fast but shapes
    # slowly (50 % on "What shape is the red object?" in one-object scenes after 2,500 CPU steps).
    # 128 px in, a 16 x 16 map of 64-channel cells out (stride 8). Run it in fp32: convolutions
    # under CPU bf16 autocast were several times slower here. In its one trial it did worse than
    # the ViT at equal steps (51.4 % vs 60.2 % after 1,000; see the shipped model's card).
    "shapes-cnn": {
        "vision": dict(model_type="resnet", embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
                       layer_type="basic", downsample_in_first_stage=False, image_size=128),
        "text": dict(model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=512, vocab_size=1024, max_position_embeddings=1024),
        "fusion": dict(cross_attention_mlp_ratio=2),
    },
}


EASY_FAMILIES = ("count", "exist", "query_color", "query_shape", "query_size")


@dataclass
class TrainConfig:
    out: str = "runs/mmchat"
    stage: str = "vqa"  # "align": ITC + ITM on scene captions, before "vqa"
    preset: str = "shapes-small"
    init_from: str | None = None  # an mmchat checkpoint to continue from instead of a new model
    pretrained_vision: str | None = None  # a local path or hub id instead of the preset's vision config
    pretrained_lm: str | None = None  # a local path or hub id instead of the preset's LM config
    gguf_file: str | None = None  # with --pretrained-lm, a GGUF file inside that folder
    cross_attention_every: int = 1
    gate_init: float = 0.0  # initial tanh gate value (0: the fused model starts as its LM)
    gate_lr_scale: float = 1.0  # the gates' learning rate, as a multiple of --lr
    patch_position_code: bool = False  # a 2-D sincos code on the ViT patches (added to --init-from's too)
    patch_position_init: float = 1.0  # its map starts as this times the identity
    steps: int = 20000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 500
    weight_decay: float = 0.05
    max_turns: int = 6
    min_turns: int = 1  # set to max_turns for full sequences: no padding, each image encoded once per 6 answers
    shapes_weight: float = 1.0
    family_weights: list[str] = field(default_factory=list)  # e.g. relation=3 count=2 describe=4 where=1 (where: training only)
    object_weights: list[str] = field(default_factory=list)  # e.g. 5=2 6=2: crowded scenes more often (training only)
    more_variety: bool = False  # more small sides, equilateral triangles, noise over objects (all within the spec)
    small_sides: float = -1.0  # share of scenes at 96-160 px; -1: a third with --more-variety, else none
    small_objects: float = -1.0  # share of objects drawn small (training only); -1: the spec's half
    native_sides: float = 0.0  # share of scenes drawn at the model's own input side: they reach the ViT unresampled
    phrasing_v2: float = 0.0  # share of ShapesVQA questions asked in a random v2 form (mmchat.data.phrasing)
    easy: bool = False  # curriculum stage: scenes of 1-2 objects, no relation/compare questions
    vqa_data: list[str] = field(default_factory=list)
    vqa_weight: float = 0.25
    eval_seed: int = 424242
    eval_images: int = 100
    eval_every: int = 1000
    save_every: int = 1000
    log_every: int = 50
    seed: int = 0  # give each --init-from stage its own: with the same seed it replays the last stage's conversations
    mixed_precision: str = "no"  # "bf16" on a GPU
    num_workers: int = 1
    threads: int = 0  # torch CPU threads; 0 keeps torch's default. 1 is fastest on a busy 2-core machine
    freeze_vision: bool = False
    freeze_language_model: bool = False
    resume: bool = False
    stop_at: int = 0  # stop with a checkpoint here, on the --steps schedule; --resume goes on (e.g. with a new mix)
    max_minutes: float = 0.0  # end the run (saving final) once training has run this long; 0: no limit
    decay_by_time: bool = False  # with --max-minutes: the cosine follows the clock too, so it ends with the time box
    centre_loss: float = 0.0  # weight of the auxiliary object-centre loss on the patches (mmchat.training.centres); 0: off
    answer_balanced: bool = False  # every answer weighs the same in the loss, however long (mmchat.training.balanced)
    answer_length_power: float = 1.0  # with --answer-balanced: a token weighs 1 / (its answer's length) ** this


def tokenizer_corpus(seed: int = 0, n_scenes: int = 3000, extra: list[str] | None = None) -> list[str]:
    """Text the BPE is trained on: every question template filled in, answers, and extra text.

    Answers are entries of their own: in a chat an answer starts right after `<|assistant|>`, with
    no space before it, and the byte-level BPE only merges a word into one token in the form it saw.
    """
    rng = random.Random(seed)
    corpus = []
    for _ in range(n_scenes):
        objects = sample_scene(rng, 128)
        for family in FAMILIES:
            q = sample_question(objects, rng, family)
            if q is not None:
                corpus += [q["question"], q["answer"]]
    return corpus + (extra or [])


def new_model(cfg: TrainConfig, vqa_examples: list[VQAExample]) -> tuple[MMChatForConditionalGeneration, MMChatProcessor]:
    if cfg.init_from:
        config = MMChatConfig.from_pretrained(cfg.init_from)
        # A code added to a checkpoint without one is initialised; the rest is the checkpoint's.
        if cfg.patch_position_code and not config.patch_position_code:
            config.patch_position_code, config.patch_position_init = True, cfg.patch_position_init
        model = MMChatForConditionalGeneration.from_pretrained(cfg.init_from, config=config)
        return model, MMChatProcessor.from_pretrained(cfg.init_from)
    preset = PRESETS[cfg.preset]
    extra = [text for ex in vqa_examples[:20000] for text in (ex.question, ex.multiple_choice_answer)]
    fusion = {"cross_attention_every": cfg.cross_attention_every, "cross_attention_gate_init": cfg.gate_init,
              "patch_position_code": cfg.patch_position_code, "patch_position_init": cfg.patch_position_init,
              **preset.get("fusion", {}),
              "freeze_vision": cfg.freeze_vision, "freeze_language_model": cfg.freeze_language_model}
    return build_from_pretrained(
        cfg.pretrained_vision or preset["vision"], cfg.pretrained_lm or preset["text"],
        tokenizer_corpus(cfg.seed, extra=extra), gguf_file=cfg.gguf_file, **fusion,
    )


def set_trainable(model: MMChatForConditionalGeneration, cfg: TrainConfig) -> int:
    """Freeze the backbones asked for; the fusion (projector + cross-attention) always trains."""
    model.requires_grad_(True)
    if cfg.freeze_vision:
        model.vision_model.requires_grad_(False)
    if cfg.freeze_language_model:
        model.language_model.requires_grad_(False)
        for block in model.cross_attention_blocks():
            block.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _key_weights(items: list[str], key: type, flag: str, check: Callable[[dict], object]) -> dict | None:
    """["relation=3", "count=1.5"] -> {"relation": 3.0, "count": 1.5}, checked by `check` now rather
    than later inside a data-loader worker; a bad item ends the run with what `flag` takes."""
    weights = {}
    try:
        for item in items:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"no '=' in {item!r}")
            weights[key(name)] = float(value)
        check(weights)
    except ValueError as e:
        raise SystemExit(f"{flag}: {e}") from None
    return weights or None


def parse_family_weights(items: list[str]) -> dict[str, float] | None:
    """["relation=3", "count=2"] -> {"relation": 3.0, "count": 2.0}; families not named weigh 1."""
    return _key_weights(
        items, str, "--family-weights takes FAMILY=WEIGHT", lambda w: family_weight_list(w, ALL_FAMILIES)
    )


def parse_object_weights(items: list[str]) -> dict[int, float] | None:
    """["5=2", "6=2"] -> {5: 2.0, 6: 2.0}; object counts not named weigh 1."""
    return _key_weights(items, int, "--object-weights takes COUNT=WEIGHT", object_count_weights)


def lr_lambda(cfg: TrainConfig, elapsed_s: Callable[[], float] | None = None):
    """Linear warm-up, then a cosine to `min_lr_ratio` over the steps; with `decay_by_time` (and a clock),
    over whichever ends first, the steps or the --max-minutes box (on a GPU nobody knows the step rate
    before the run)."""
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        if cfg.decay_by_time and cfg.max_minutes and elapsed_s is not None:
            progress = max(progress, elapsed_s() / (60 * cfg.max_minutes))
        progress = min(1.0, progress)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def evaluate_model(
    model, processor, examples: list[VQAExample], batch_size: int = 128, accelerator: Accelerator | None = None,
    predictions_path: Path | None = None,
) -> dict:
    """VQA accuracy on `examples`; with an accelerator, every process answers its share and all are gathered.

    Every process calls this (it is collective). The shares are padded to equal length, so that
    each process runs as many generate calls as the others (FSDP and ZeRO-3 gather weights in
    each forward, and `generate` syncs them); the padding repeats a question and is dropped by id.
    The main process writes the answers to `predictions_path`, as `python -m mmchat evaluate` does.
    """
    engine = ChatEngine(MMChatAdapter(model, processor))
    was_training = model.training
    model.eval()
    if accelerator is None or accelerator.num_processes == 1:
        predictions = predict(engine, examples, batch_size=batch_size, progress=False)
    else:
        with accelerator.split_between_processes(list(examples), apply_padding=True) as share:
            mine = predict(engine, share, batch_size=batch_size, progress=False)
        gathered = accelerator.gather_for_metrics(mine, use_gather_object=True)
        by_id = {p["question_id"]: p for p in gathered}
        predictions = [by_id[ex.question_id] for ex in examples]
    model.train(was_training)
    if predictions_path is not None and (accelerator is None or accelerator.is_main_process):
        predictions_path.write_text(json.dumps(predictions))
    return score_predictions(predictions, examples)


def batch_crc(batch: dict[str, torch.Tensor]) -> int:
    """A fingerprint of a batch's token ids: the log shows that the processes drew different data."""
    return zlib.crc32(batch["input_ids"].numpy().tobytes())


def save_final(accelerator: Accelerator, trainee: torch.nn.Module, processor: MMChatProcessor, final: Path) -> None:
    """Save the plain model (training-only heads stay behind) from one full state dict.

    `get_state_dict` is collective (FSDP and ZeRO-3 gather the shards into it), so every process
    calls it; only the main process writes.
    """
    state_dict = accelerator.get_state_dict(trainee)
    unwrapped = accelerator.unwrap_model(trainee)
    model = getattr(unwrapped, "model", unwrapped)  # AlignmentModel and CentreModel hold it as .model
    if model is not unwrapped:
        state_dict = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    if accelerator.is_main_process:
        model.save_pretrained(final, state_dict=state_dict, save_function=accelerator.save)
        processor.save_pretrained(final)


def trained_s(accelerator: Accelerator, t0: float) -> float:
    """Seconds the slowest process has trained: one figure for all, so all stop at the same step (or
    DDP would hang) and a clock-following learning rate stays the same in every process."""
    elapsed = torch.tensor(time.time() - t0, device=accelerator.device)
    return accelerator.gather(elapsed).max().item()


def train(cfg: TrainConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # The alignment stage leaves the LM head unused; DDP must be told, or its second step fails.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.stage == "align")
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, kwargs_handlers=[ddp]
    )
    set_seed(cfg.seed)
    out = Path(cfg.out)
    vqa_examples = [ex for d in cfg.vqa_data for ex in load_vqa(d)]
    checkpoints, init_dir = out / "checkpoints", out / "init"
    latest = None
    if cfg.resume and checkpoints.exists() and any(checkpoints.iterdir()):
        latest = max(checkpoints.iterdir(), key=lambda p: int(p.name.split("-")[-1]))
    if latest is not None:
        # The run's own config and tokenizer, not new ones built from today's arguments.
        model = MMChatForConditionalGeneration(MMChatConfig.from_pretrained(init_dir))
        processor = MMChatProcessor.from_pretrained(init_dir)
    else:
        model, processor = new_model(cfg, vqa_examples)
        if accelerator.is_main_process:
            model.config.save_pretrained(init_dir)
            processor.save_pretrained(init_dir)
    step = int(latest.name.split("-")[-1]) if latest is not None else 0
    n_trainable = set_trainable(model, cfg)
    accelerator.print(f"parameters: {model.num_parameters():,} total, {n_trainable:,} trainable")

    # Streams seeded per process and per resume point: no two see the same conversations.
    seed = cfg.seed + 1000 * accelerator.process_index + 7919 * step
    if cfg.stage == "align":
        trainee, data, collate = AlignmentModel(model), ShapesCaptions(seed), CaptionCollator(processor)
    else:
        easy = {"max_objects": 2, "families": EASY_FAMILIES} if cfg.easy else {}
        family_weights = parse_family_weights(cfg.family_weights)
        shapes = ShapesConversations(
            seed, cfg.max_turns, cfg.min_turns, family_weights=family_weights,
            object_weights=parse_object_weights(cfg.object_weights), more_variety=cfg.more_variety,
            phrasing_v2=cfg.phrasing_v2, small_sides=None if cfg.small_sides < 0 else cfg.small_sides,
            small_objects=None if cfg.small_objects < 0 else cfg.small_objects,
            native_side=getattr(model.config.vision_config, "image_size", None), native_sides=cfg.native_sides, **easy,
        )
        sources, weights = [shapes], [cfg.shapes_weight]
        if vqa_examples:
            sources.append(VQAConversations(vqa_examples, seed + 1, cfg.max_turns, cfg.min_turns))
            weights.append(cfg.vqa_weight)
        data = Mixture(sources, weights, seed)
        if cfg.centre_loss:
            trainee = CentreModel(model, cfg.centre_loss)
            collate = ConversationCollator(processor, centre_grid=centre_grid(model))
        elif cfg.answer_balanced:
            trainee, collate = AnswerBalancedModel(model, cfg.answer_length_power), ConversationCollator(processor)
        else:
            trainee, collate = model, ConversationCollator(processor)
    loader = DataLoader(data, batch_size=cfg.batch_size, collate_fn=collate,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    trainable = [(n, p) for n, p in trainee.named_parameters() if p.requires_grad]
    gates = [p for n, p in trainable if n.endswith("_gate")]
    decay = [p for n, p in trainable if p.ndim >= 2]
    no_decay = [p for n, p in trainable if p.ndim < 2 and not n.endswith("_gate")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
         {"params": gates, "weight_decay": 0.0, "lr": cfg.lr * cfg.gate_lr_scale}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    elapsed = 0.0  # seconds trained, as every process agrees after each step (--max-minutes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, lambda: elapsed))
    # The loader is endless and already different per process by its seed, so it is not prepared.
    # The scheduler is not prepared: accelerate would step it once per process per step, and --steps
    # and --warmup count optimizer steps whatever the number of processes. It steps below, once per
    # optimizer step, and is saved with the checkpoints as a registered object.
    if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed sizes its engine by the batch it cannot see here
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    trainee, optimizer = accelerator.prepare(trainee, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if latest is not None:
        accelerator.load_state(str(latest))
        accelerator.print(f"resumed from {latest} at step {step}")
    out.mkdir(parents=True, exist_ok=True)
    eval_dir = out / "eval-data"
    if accelerator.is_main_process and not (eval_dir / "annotations.json").exists():
        write_dataset(eval_dir, cfg.eval_images, seed=cfg.eval_seed, questions_per_image=7)
    accelerator.wait_for_everyone()
    eval_examples = load_vqa(eval_dir)
    log_path = out / "log.jsonl"
    if accelerator.is_main_process:
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))

    trainee.train()
    batches = iter(loader)
    bar = tqdm(total=cfg.steps, initial=step, disable=not accelerator.is_main_process, desc="training")
    t0, loss_sum, loss_n, metrics = time.time(), 0.0, 0, {}
    end = min(cfg.stop_at, cfg.steps) if cfg.stop_at else cfg.steps
    timed_out = False
    first_crcs: list[int] | None = None
    while step < end:
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            if first_crcs is None:  # collective, so every process takes part, once per run
                crc = torch.tensor([batch_crc(batch)], dtype=torch.long, device=accelerator.device)
                first_crcs = accelerator.gather(crc).tolist()  # one per process
            with accelerator.accumulate(trainee):
                outputs = trainee(**{k: v.to(accelerator.device) for k, v in batch.items()})
                loss = outputs["loss"]
                metrics = {k: round(v, 4) for k, v in outputs.items() if isinstance(v, float)}  # alignment's
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainee.parameters(), 1.0)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            loss_sum += loss.detach().float().item()
            loss_n += 1
        step += 1
        bar.update(1)
        if cfg.max_minutes:
            elapsed = trained_s(accelerator, t0)
        if cfg.max_minutes and elapsed > 60 * cfg.max_minutes:
            accelerator.print(f"\n--max-minutes {cfg.max_minutes}: ending the run at step {step}")
            end, timed_out = step, True
        if step % cfg.log_every == 0 or step == end:  # the last step too, however the run ends
            loss_avg = accelerator.gather(torch.tensor(loss_sum / loss_n, device=accelerator.device)).mean().item()
            record = {"step": step, "loss": round(loss_avg, 4), "lr": scheduler.get_last_lr()[0],
                      "elapsed_s": round(time.time() - t0, 1), **metrics}
            if first_crcs:  # the first record of a run: which data each process started on
                record.update(processes=accelerator.num_processes, first_batch_crc=first_crcs)
                first_crcs = []
            bar.set_postfix(loss=f"{loss_avg:.4f}")
            loss_sum, loss_n = 0.0, 0
            if cfg.stage == "vqa" and (step % cfg.eval_every == 0 or step == end):
                unwrapped = accelerator.unwrap_model(trainee)
                scores = evaluate_model(getattr(unwrapped, "model", unwrapped), processor, eval_examples,
                                        accelerator=accelerator, predictions_path=out / "eval-predictions.json")
                if accelerator.is_main_process:
                    record["eval_accuracy"] = round(scores["overall"], 2)
                    record["eval_per_family"] = {k: round(v, 1) for k, v in scores["per_question_type"].items()}
                    accelerator.print(f"\nstep {step}: " + format_scores(scores).replace("\n", " | "))
            if accelerator.is_main_process:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
        if step % cfg.save_every == 0 or step == end:
            accelerator.save_state(str(checkpoints / f"step-{step}"))
            accelerator.wait_for_everyone()  # every process has written its part before old ones go
            if accelerator.is_main_process:
                for old in sorted(checkpoints.iterdir(), key=lambda p: int(p.name.split("-")[-1]))[:-2]:
                    for f in sorted(old.rglob("*"), reverse=True):
                        f.unlink() if f.is_file() else f.rmdir()
                    old.rmdir()
    bar.close()
    accelerator.wait_for_everyone()
    if end < cfg.steps and not timed_out:
        accelerator.print(f"stopped at step {end} of {cfg.steps}; --resume continues from {checkpoints / f'step-{end}'}")
        return checkpoints / f"step-{end}"
    final = out / "final"
    save_final(accelerator, trainee, processor, final)
    accelerator.wait_for_everyone()
    accelerator.print(f"saved {final}")
    return final


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m mmchat train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, f in TrainConfig.__dataclass_fields__.items():
        default = f.default if f.default_factory is MISSING else f.default_factory()
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default)
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="*", default=default)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=default)
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    if cfg.preset not in PRESETS and not cfg.init_from:
        raise SystemExit(f"unknown --preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    if cfg.stage not in ("align", "vqa"):
        raise SystemExit(f"unknown --stage {cfg.stage!r}; choose align or vqa")
    train(cfg)


if __name__ == "__main__":
    main()
