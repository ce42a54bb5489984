"""mmchat's forwards as traced graphs, run without Python between their ops (and without the GIL).

Eager, each of a forward's few hundred small ops returns to Python and takes the GIL back before
the next, so on a CPU the scheduler's forwards wait on whatever Python the users' threads run
(their questions' ids, heat-maps, the world gate), and a lone user's decode step is mostly Python.
A graph traced by `torch.jit.trace` runs its ops in C++, the GIL let go for the whole call.

Tracing records one path through the Python. Where the code branches on a size (a decode step's
single query packs grouped heads rather than repeating them; a prompt whose map is kept at its
last positions only attends by SDPA), each branch is a graph of its own, keyed here by what
decides it. The eager forward is the same module, run eagerly: each kind runs it until `trace`
(`ChatEngine.trace`; the app calls it on a thread of its own once it serves) gives the kind a
graph, kept only if, once warm, it gives the module's outputs bit for bit at other sizes than the
one it was traced at. So answers do not change with tracing; a kind whose graph is not exact
stays eager.

torch.jit is deprecated in favour of torch.compile and torch.export. Compiling took 34-80 s a shape
on this CPU with recompiles per new shape (docs/serving-measurements.md), and an exported program
runs its ops from Python again, so the tracer it is, while this torch has it; without it every
forward is eager, as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..modeling.fusion import CrossAttentionCache
from .answer_tree import tree_mask
from .kv import KV, from_cache, image_state, image_tensors, to_cache

Kind = tuple[bool, bool, bool]  # (recorded, a decode step, its map kept at its last positions only)
KINDS: tuple[Kind, ...] = tuple(
    (record, decode, partial) for record in (True, False) for decode in (True, False) for partial in (False, True)
    if not (decode and partial)  # a decode step's one position is all it keeps
)
# A second look's prompt (`Scheduler._look_again`): the one kind an engine that records runs unrecorded.
LOOK: Kind = (False, False, True)


def trace_checked(module: nn.Module, example: tuple, checks: Sequence[tuple]) -> Any:
    """`module` traced on `example`, or None where tracing fails or the graph's outputs differ, in
    any bit, from the module's own on any of `checks` (inputs of other sizes). The graph is run
    twice first: the graph executor optimizes it on its second call, and it is the optimized graph
    that serves."""
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # The deprecation (above), and the tracer's warnings about branches it fixed: the kinds.
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(module, example, check_trace=False)
            for _ in range(2):
                graph(*example)
            for inputs in checks:
                if not all(torch.equal(a, b) for a, b in zip(graph(*inputs), module(*inputs), strict=True)):
                    return None
    except Exception:  # noqa: BLE001 (whatever fails, the forward stays eager)
        return None
    return graph


class _Encode(nn.Module):
    """Pixels -> the projected patches, then each fused layer's image keys and values."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = self.model.encode_images(pixel_values).image_states  # (B, N, D)
        return (states, *[t for block in self.model.cross_attention_blocks() for t in block.project_kv(states)])


class Encoder:
    """`MMChatAdapter.encode_images`' model call: eager until `trace` gives it a graph (the same outputs)."""

    def __init__(self, model: nn.Module):
        self.module = _Encode(model)
        self.graph: Any = None
        self.layers = [layer.layer_idx for layer in model.decoder_layers() if hasattr(layer, "cross_attn")]

    def __call__(self, pixel_values: torch.Tensor) -> CrossAttentionCache:
        """(B, 3, H, W) -> the batch's patches and every fused layer's keys/values."""
        forward = self.module if self.graph is None else self.graph
        with torch.inference_mode():
            return image_state(CrossAttentionCache, self.layers, forward(pixel_values))

    def trace(self, pixel_values: torch.Tensor) -> bool:
        """`pixel_values`: one image's, for the example inputs. Whether the graph is kept."""
        one = pixel_values[:1]
        self.graph = trace_checked(self.module, (one.expand(2, *one.shape[1:]),), [(one.expand(3, *one.shape[1:]),), (one,)])
        return self.graph is not None


class _Forward(nn.Module):
    """One kind of forward of the LM with its images, its tensors in and out as flat tuples."""

    def __init__(self, model: nn.Module, record: bool):
        super().__init__()
        self.model = model
        self.record = record
        self.layers = [layer.layer_idx for layer in model.decoder_layers() if hasattr(layer, "cross_attn")]
        self.n_layers = len(model.decoder_layers())

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor, *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = self.n_layers
        past = [(tensors[2 * i], tensors[2 * i + 1]) for i in range(n)]
        images = image_state(CrossAttentionCache, self.layers, tensors[2 * n :])
        # Sizes, so that a trace keeps them variables (an int would be the traced size's constant).
        T, K = ids.shape[1], keep.shape[0]  # new positions; the last K of them are read
        recorder: list[torch.Tensor] | None = [] if self.record else None
        out = self.model.language_model(
            input_ids=ids,  # (B, T)
            attention_mask=mask,  # (B, 1, T, L + T) bool
            position_ids=pos,  # (B, T)
            past_key_values=to_cache(past),
            use_cache=True,
            logits_to_keep=torch.arange(T - K, T, device=ids.device),
            cross_attention_cache=images,
            cross_attentions=recorder,
            cross_attentions_keep=K,
        )
        logits = out.logits.float()  # (B, K, V)
        grown = [t for kv in from_cache(out.past_key_values) for t in kv]
        if recorder is None:
            return (logits, *grown)
        # layers x (B, nh, K, N) joined along the heads, one mean: (B, K, N). Each layer's map is of
        # the K positions already (`cross_attentions_keep`; a kind that keeps all has K = T).
        weights = torch.cat(recorder, dim=1).mean(dim=1)
        return (logits, weights, *grown)


class Forwards:
    """`MMChatAdapter.step`'s forward of one model: each kind (`KINDS`) eager until `trace` gives it a
    graph, which gives the same outputs, bit for bit (checked), so answers never change with it."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = {record: _Forward(model, record) for record in (True, False)}
        self.graphs: dict[Kind, Any] = {}  # kind -> its graph, once traced (None: it stays eager)
        text = model.config.text_config
        self.kv_heads = text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.n_layers = len(model.decoder_layers())
        self.device = next(model.parameters()).device
        self.dtype = model.dtype  # read once: `model.dtype` walks the parameters, 7 µs a time, 9 times a prompt's forward

    def __call__(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, L + T), or (B, 1, T, L + T) bool
        position_ids: torch.Tensor,  # (B, T)
        past: KV | None,
        images: CrossAttentionCache,
        record: bool,
        keep: int,
    ) -> tuple[torch.Tensor, KV, torch.Tensor | None]:
        """The last `keep` positions' logits (B, keep, V), the grown keys/values, and where those
        positions looked (B, keep, N), mean over fused layers and heads, when `record`."""
        B, T = input_ids.shape
        forward = self.graphs.get((record, T == 1, 0 < keep < T))
        if forward is None:  # not traced (yet), or its graph was not exact
            forward = self.modules[record]
        if attention_mask.dim() == 2:  # the columns each position sees (itself always: no empty row)
            attention_mask = tree_mask(attention_mask, T, [None] * B)
        if past is None:
            past = [(self._keys(B, 0), self._keys(B, 0)) for _ in range(self.n_layers)]
        elif past[0][0].dtype != self.dtype:  # the rows' keys/values came from the other copy
            past = [(k.to(self.dtype), v.to(self.dtype)) for k, v in past]
        with torch.inference_mode():
            out = forward(*_flat(input_ids, attention_mask, position_ids, past, images, keep))
        grown = out[2:] if record else out[1:]
        return out[0], [(grown[2 * i], grown[2 * i + 1]) for i in range(self.n_layers)], out[1] if record else None

    def trace(self, example: CrossAttentionCache, kinds: Sequence[Kind] = KINDS) -> int:
        """Give each of `kinds` its graph, one after another (each is used as soon as it is ready);
        `example`: one image's state (`encode_images`), for the example inputs. How many are kept."""
        for kind in kinds:
            record, decode, partial = kind

            def inputs(B: int, L: int, grow: int) -> tuple[torch.Tensor, ...]:
                T = 1 if decode else 3 + grow  # noqa: B023 (used within the loop's turn)
                return self._example(example, B, T, L, 1 + grow if partial else T)  # noqa: B023

            self.graphs[kind] = trace_checked(self.modules[record], inputs(2, 3, 0), [inputs(3, 0, 1), inputs(1, 6, 2)])
        return sum(self.graphs[kind] is not None for kind in kinds)

    def _keys(self, B: int, L: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, kv heads, L, head dim) keys or values: random for an example, none for rows without a cache."""
        shape = (B, self.kv_heads, L, self.head_dim)
        if L:
            return torch.randn(shape, generator=generator).to(self.device, self.dtype)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _example(self, image: CrossAttentionCache, B: int, T: int, L: int, keep: int) -> tuple[torch.Tensor, ...]:
        """Inputs of a forward of B rows, T new positions after L cached, the last `keep` read."""
        g = torch.Generator().manual_seed(B * 1000 + T * 10 + L)
        device = image.image_states.device
        ids = torch.randint(2, 20, (B, T), generator=g).to(device)
        pos = (L + torch.arange(T))[None].expand(B, T).contiguous().to(device)
        mask = tree_mask(torch.ones((B, L + T), dtype=torch.long, device=device), T, [None] * B)
        past = [(self._keys(B, L, g), self._keys(B, L, g)) for _ in range(self.n_layers)]
        images = CrossAttentionCache(
            image.image_states.expand(B, *image.image_states.shape[1:]),
            {layer: (k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:])) for layer, (k, v) in image.key_values.items()},
        )
        return _flat(ids, mask, pos, past, images, keep)


def _flat(
    ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: KV, images: CrossAttentionCache, keep: int
) -> tuple[torch.Tensor, ...]:
    """A forward's inputs as `_Forward` takes them: `keep` as the size of a tensor, then the tensors."""
    return (ids, mask, pos, torch.empty(keep, dtype=torch.bool), *[t for kv in past for t in kv], *image_tensors(images))
