"""Continuous batching: one thread owns the model and runs every user's request in shared steps.

Requests arrive on a thread-safe queue. Between two decode steps the scheduler drops the rows that
finished or were stopped and admits the newcomers: their prompts run together in one prefill (each
starting from the keys/values of its conversation's earlier turns, when cached), either in the same
forward as the running rows' next tokens or in one of their own, whichever the fitted cost of a
forward says is cheaper (`forward_cost.py`); then they join the running batch (`batch.py`), whose
per-layer keys/values are left-padded to one length and whose image keys/values sit in slots
(`slots.py`).
Each row keeps its own position ids, attention mask, image keys/values and sampling settings, so a
batch answers exactly what each request alone would (in fp32; in bf16 the rounding can move with the
batch's shape, as on any GPU). Tokens go to each request's own queue as they are chosen. A greedy
row's decode step also feeds the tokens likely to follow its own (`drafts.py`: from the answers
given before) and keeps those the model chooses too, so one step may give a row several tokens; and
where the family's step takes a tree's mask, a greedy newcomer's prefill feeds the answers given
before to its kind of question as a tree after its prompt (`answer_tree.py`), so that a short
answer, and the end of its turn, can be chosen in the prefill alone.
Where a checkpoint carries a second look (`second_look.py`), a newcomer of its question families
whose first token the prefill chose unsure has it chosen again, in one more forward, over views of
its image shifted a few pixels, once the prefill's other rows have their tokens; where the family
allows it (`steps_side_by_side`), on a thread of its own while the others go on. There, on a CPU,
a newcomer's new image is encoded on a thread of its own too (the images queued meanwhile in one
batch; a burst of many in two halves, the second on a helper thread), and the newcomer waits apart
until it is ready, the running rows decoding meanwhile.

mmchat and Llama 3.2 Vision run step by step (`adapter.batched`). BLIP cannot (`adapter.batched`
False): it is answered on the same thread with its own `generate`, the requests waiting at that
moment with the same settings in one batch (`adapter.collate`), from each image's encoding kept in
the same cache (`adapter.keeps_images`).
A batch's rows stream and end on their own (an end-of-turn token, or Stop), but no request joins a
running `generate`. Heat-map passes run on this thread too, so nothing else uses
the model meanwhile (Mllama switches its attention implementation model-wide to get weights).

transformers' own continuous batching (`generate_batch`) serves text-only models from a paged cache;
it has no place for per-row image keys/values, hence this loop.
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .answer_tree import AnswerTree, LikelyAnswers, grow_tree, tree_mask
from .batch import Batch, merge_batches, select_rows
from .cache import LRUBytes, PrefixCache
from .drafts import AnswerNgrams
from .encode_beside import EncodeBeside
from .forward_cost import ForwardCost
from .kv import KV
from .request import Request, choose_tokens
from .rows_streamer import RowsStreamer
from .second_look import mean_log_probs
from .slots import ImageSlots

logger = logging.getLogger(__name__)
_running: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """End the scheduler threads before the interpreter goes: one mid-step at exit aborts the process."""
    for scheduler in list(_running):
        scheduler.close()


@dataclass
class _Unsure:
    """A prefill row whose first token waits for its second look: what choosing it later needs."""

    request: Request
    last: torch.Tensor  # (V,) the first token's logits
    tree: AnswerTree | None
    tree_logits: torch.Tensor  # (k, V) the logits at its tree's k nodes (k = 0 without a tree)
    end: int  # its prompt's last column among the prefill's kept ones
    maps: torch.Tensor | None  # (K, N) the maps of the prefill's kept columns, of this row


@dataclass
class _Parked:
    """Rows whose second look runs on the look thread: apart from the running batch until it ends."""

    batch: Batch
    waiting: list[_Unsure]
    look: Future  # -> (n, V) their mean log-probabilities over their views


class Scheduler:
    def __init__(
        self,
        adapter: Any,
        max_batch: int = 64,
        image_cache_bytes: int = 64 << 20,
        prefix_cache_bytes: int = 128 << 20,
        record_attention: bool = True,
        threaded: bool = True,
        draft_tokens: int = 4,
    ):
        self.adapter = adapter
        self.threaded = threaded
        self.max_batch = max_batch
        self.record_attention = record_attention
        self.images = LRUBytes(image_cache_bytes)  # image key -> the family's image state for one image
        self.prefixes = PrefixCache(prefix_cache_bytes)
        self._slots = ImageSlots(adapter)  # the running batch's image keys/values
        self.eos = set(adapter.eos_token_ids())
        self.pad = adapter.pad_token_id()
        self._queue: queue.Queue = queue.Queue()
        self._batch: Batch | None = None
        self._lock = threading.Lock()  # inline: one caller runs a round at a time
        self.steps = self.prefills = self.mixed_steps = self.split_steps = 0
        self.second_looks = 0  # first tokens chosen again over shifted views (`second_look.py`)
        # Speculative decoding (`drafts.py`): up to `draft_tokens` drafted tokens a greedy row; 0: none.
        self.drafts = AnswerNgrams() if draft_tokens > 0 else None
        self.max_draft = draft_tokens
        self.drafted = self.accepted = 0  # drafted tokens fed, and those the model chose too
        # Whole answers drafted into prefills (`answer_tree.py`), for a family whose step takes a tree's mask.
        self.likely = LikelyAnswers() if draft_tokens > 0 and adapter.tree_masks else None
        self.trees = self.tree_nodes = self.tree_answers = 0  # rows given a tree, its nodes, answers ended in the prefill
        self.cost = ForwardCost()
        # Where the family allows it, a second look runs on a thread of its own, beside the steps: its
        # rows wait apart (`_parked`) and the batch's others go on. Inline, it runs in the step.
        side = threaded and getattr(adapter, "steps_side_by_side", False)
        self._looker = ThreadPoolExecutor(1, thread_name_prefix="mmchat-look") if side else None
        self._parked: list[_Parked] = []
        # There too, on a CPU (where it was measured: the encode uses the second core), new images are
        # encoded on threads of their own while the batch goes on (`encode_beside.py`).
        beside = side and adapter.device.type == "cpu"
        self.beside = EncodeBeside(adapter, self.images, lambda: self._queue.put(("encoded", None))) if beside else None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="mmchat-scheduler", daemon=True)
            _running.add(self)
            self._thread.start()

    # ---- called from any thread ----

    def submit(self, request: Request) -> Request:
        self._queue.put(("request", request))
        return request

    def prefetch(self, image_key: str, image: Image.Image) -> None:
        """Start encoding a new image before its request is submitted, where images are encoded
        beside the batch (`encode_beside.py`); a no-op where it is cached already."""
        if self.beside is not None and image_key not in self.images:
            self._queue.put(("prefetch", (image_key, image)))

    def call(self, fn: Callable[[], Any], timeout_s: float | None = None) -> Any:
        """Run `fn` on the scheduler thread (between steps) and return its result or raise its error."""
        if not self.threaded:
            with self._lock, torch.inference_mode():
                return fn()
        done: queue.Queue = queue.Queue(maxsize=1)
        self._queue.put(("call", (fn, done)))
        ok, value = done.get(timeout=timeout_s)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self.close_soon()
        if self._thread is not None:
            self._thread.join(timeout=10)
        else:
            self.pump()  # inline: the close is taken now, queued requests get their error
        if self._looker is not None:
            self._looker.shutdown(wait=False)
        if self.beside is not None:
            self.beside.shutdown()

    def close_soon(self) -> None:
        self._queue.put(("close", None))

    def waiting(self) -> int:
        return self._queue.qsize() + self._rows()

    def _rows(self) -> int:
        """Rows the scheduler holds: the running batch's, those waiting for a second look or their image."""
        running = len(self._batch.rows) if self._batch else 0
        return running + sum(len(p.batch.rows) for p in self._parked) + len(self._awaiting())

    def _awaiting(self) -> list[Request]:
        """The requests waiting for their image to be encoded beside the batch."""
        return self.beside.waiting if self.beside is not None else []

    def release(self, image_keys: list[str]) -> None:
        """Forget what is cached for these images (a conversation cleared or moved to another image)."""
        released = set(image_keys)
        self.images.pop_where(lambda key: key not in released)
        self.prefixes.release(image_keys)

    # ---- the scheduler thread ----

    def _loop(self) -> None:
        with torch.inference_mode():
            while self._tick(block=True):
                pass

    def _tick(self, block: bool) -> bool:
        """One round: take what is queued (waiting for it when idle and `block`), admit the newcomers,
        run one decode step. False once the scheduler is closed."""
        newcomers: list[Request] = []
        prefetch: dict[str, Image.Image] = {}
        block = block and self._batch is None
        try:
            while len(newcomers) + self._rows() < self.max_batch:
                kind, item = self._queue.get(block=block and not newcomers)
                if kind == "close":
                    parked = [r for p in self._parked for r in p.batch.rows]
                    for request in newcomers + (self._batch.rows if self._batch else []) + parked + self._awaiting():
                        request.out.put(("error", RuntimeError("The engine was closed.")))
                    self._batch, self._parked = None, []
                    if self.beside is not None:
                        self.beside.waiting = []
                    return False
                if kind in ("looked", "encoded"):  # a second look, or new images' encode, ended: its rows come in below
                    block = False
                elif kind == "prefetch":
                    prefetch[item[0]] = item[1]
                    block = False
                elif kind == "call":
                    self._run_call(*item)
                elif not item.cancel.is_set():
                    newcomers.append(item)
                else:
                    item.out.put(("end", "stopped"))
        except queue.Empty:
            pass
        if self._batch is None and not newcomers and self._rows() >= self.max_batch:
            # Full, and every row waits on a look or an encode: wait for one (the queue is not read when full).
            encodes = self.beside.futures if self.beside is not None else []
            wait([*encodes, *(p.look for p in self._parked)], timeout=1.0, return_when=FIRST_COMPLETED)
        try:
            self._unpark()
            if self.beside is not None:  # those whose image is not ready wait there
                newcomers = self.beside.ready(newcomers)
                self.beside.prefetch(prefetch)
            if not self.adapter.batched:
                for group in self._groups(newcomers):
                    self._generate(group)
                return True
            self._drop_stopped()
            if newcomers and self._batch is not None:
                cached = self._cached(newcomers)
                rows = len(self._batch.rows)
                new_columns = max(len(r.prompt) - n for r, (n, _) in zip(newcomers, cached))
                # Mixed, each running row pads its one token to the newcomers' width; apart, one forward more.
                if self.cost.cheaper_apart(wasted=rows * (new_columns - 1)):
                    self._split_step(newcomers, cached)
                else:
                    self._mixed_step(newcomers, cached)
            else:
                if newcomers:
                    self._admit(newcomers)
                if self._batch is not None:
                    self._batch = self._decode(self._batch)
        except Exception as e:  # a bug here must not kill the thread every user waits on
            logger.exception("scheduler step failed")
            for request in newcomers + (self._batch.rows if self._batch else []):
                request.out.put(("error", e))
            self._batch = None
        if self._batch is None:
            self._slots.clear()  # idle: the slots' memory goes back
        return True

    # ---- inline: no thread, the callers' threads take turns running the rounds ----

    def pump(self) -> None:
        """One round on the calling thread (inline mode: inside `spaces.GPU` on ZeroGPU hardware,
        where only the decorated call may use the GPU; a thread of our own would not get it)."""
        with self._lock, torch.inference_mode():
            self._tick(block=False)

    def receive(self, request: Request, timeout_s: float) -> tuple[str, Any]:
        """The request's next event ("token", "end" or "error"); inline, running rounds until it comes."""
        if self.threaded:
            return request.out.get(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return request.out.get_nowait()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise
                self.pump()

    def _run_call(self, fn: Callable[[], Any], done: queue.Queue) -> None:
        try:
            done.put((True, fn()))
        except Exception as e:
            done.put((False, e))

    def _drop_stopped(self) -> None:
        batch = self._batch
        if batch is None:
            return
        keep = [i for i, r in enumerate(batch.rows) if not r.cancel.is_set()]
        for r in batch.rows:
            if r.cancel.is_set():
                r.out.put(("end", "stopped"))
        if len(keep) < len(batch.rows):
            self._batch = select_rows(batch, keep, self.adapter, self._slots) if keep else None

    def _mixed_step(self, newcomers: list[Request], cached: list[tuple[int, KV | None]]) -> None:
        """One forward for the running rows' next tokens and the newcomers' prompts together: where a
        forward's fixed cost dominates (a GPU, a small batch), a separate prefill would double the
        forwards of every round in which someone joins."""
        running = self._batch
        self.steps += 1
        self.mixed_steps += 1
        try:
            self._batch = self._prefill(newcomers, running, cached=cached)
        except Exception:
            logger.exception("mixed step failed; the newcomers' prefill and the decode apart")
            self._batch = running
            self._admit(newcomers)  # each request's error reaches only its sender
            if self._batch is not None:
                self._batch = self._decode(self._batch)

    def _split_step(self, newcomers: list[Request], cached: list[tuple[int, KV | None]]) -> None:
        """The running rows' next tokens in one forward, the newcomers' prompts in another: where a
        forward's cost grows with its positions (a CPU), padding every running row to the newcomers'
        width costs more than the second forward."""
        self.split_steps += 1
        self._batch = self._decode(self._batch)
        self._admit(newcomers, cached)

    def _cached(self, requests: list[Request]) -> list[tuple[int, KV | None]]:
        """Each request's longest cached prefix: (tokens, their keys/values)."""
        return [self.prefixes.longest(r.image_key, r.prompt) for r in requests]

    def _admit(self, newcomers: list[Request], cached: list[tuple[int, KV | None]] | None = None) -> None:
        """Prefill the newcomers and add them to the running batch (if any)."""
        try:
            # Alone, they take fresh slots; beside a running batch, their rows go into its slots on joining.
            joined = self._prefill(newcomers, cached=cached, into_slots=self._batch is None)
        except Exception as e:
            if len(newcomers) == 1:
                logger.exception("prefill failed")
                newcomers[0].out.put(("error", e))
                return
            # One request's input may be what failed: run each alone, so the error reaches only its sender.
            joined = None
            for request in newcomers:
                try:
                    alone = self._prefill([request], into_slots=False)
                except Exception as e:
                    logger.exception("prefill failed")
                    request.out.put(("error", e))
                    continue
                if alone is not None:
                    joined = alone if joined is None else merge_batches(joined, alone, self.adapter)
        if joined is not None:
            self._batch = joined if self._batch is None else self._join(self._batch, joined)

    def _join(self, running: Batch, joined: Batch) -> Batch:
        """`joined`'s rows after `running`'s; into the running batch's slots when it has them."""
        images = self._slots.append([joined.images]) if self._slots.owns(running.images) else None
        return merge_batches(running, joined, self.adapter, images)

    def _image_states(self, requests: list[Request]) -> list[Any]:
        """Each request's image state: from the cache, or encoded now (the misses in one batch)."""
        states = {r.image_key: self.images.get(r.image_key) if r.image_state is None else r.image_state for r in requests}
        for r in requests:
            r.image_state = None  # held by the batch from here
        missing = {r.image_key: r.image for r in requests if states[r.image_key] is None}
        if missing:
            encoded = self.adapter.encode_images(list(missing.values()))
            for key, state in zip(missing, encoded):
                states[key] = state
                self.images.put(key, state)
        return [states[r.image_key] for r in requests]

    def _prefill(
        self,
        requests: list[Request],
        running: Batch | None = None,
        cached: list[tuple[int, KV | None]] | None = None,
        into_slots: bool = True,
    ) -> Batch | None:
        """Run the newcomers' prompts (after any cached prefix) together, and with them the next
        token of each `running` row; returns the rows still going (the running ones first).
        `into_slots` False: their images are stacked apart, for a batch that joins another later."""
        self.prefills += 1
        device = self.adapter.device
        states = self._image_states(requests)
        if running is not None and self._slots.owns(running.images):
            images = self._slots.append(states)  # only the newcomers' rows are written
        elif into_slots:
            images = self._slots.reset(([running.images] if running else []) + states)
        else:
            images = self.adapter.stack_images(states)
        cached = cached if cached is not None else self._cached(requests)
        R = len(running.rows) if running else 0
        L = running.mask.shape[1] if running else 0
        P = max([L] + [n for n, _ in cached])  # cached columns; each row's right-aligned in them
        suffixes = [r.prompt[n:] for r, (n, _) in zip(requests, cached)]
        trees = self._trees(requests, suffixes, R)
        sizes = [len(t) if t else 0 for t in trees]
        S = max(len(suffix) + k for suffix, k in zip(suffixes, sizes))  # new columns: prompts, then trees
        B = R + len(requests)
        ids = torch.full((B, S), self.pad, dtype=torch.long, device=device)
        pos = torch.zeros((B, S), dtype=torch.long, device=device)
        mask = torch.zeros((B, P + S), dtype=torch.long, device=device)
        next_pos = [p + 1 for p in running.pos.tolist()] if running else []  # each row's next position
        if running:  # one real token each, the last column; the S - 1 before it are masked
            ids[:R, -1], pos[:R, -1] = running.next_tokens, running.pos
            mask[:R, P - L : P] = running.mask
            mask[:R, -1] = 1
        for i, (n, _), suffix, tree, k in zip(range(R, B), cached, suffixes, trees, sizes):
            end = S - k  # the prompt's columns end here, its tree's nodes follow
            ids[i, end - len(suffix) : end] = torch.tensor(suffix)
            pos[i, end - len(suffix) : end] = torch.arange(n, n + len(suffix))
            mask[i, P - n : P] = 1
            mask[i, P + end - len(suffix) :] = 1
            if k:
                ids[i, end:] = torch.tensor(tree.tokens)
                pos[i, end:] = n + len(suffix) + torch.tensor(tree.depths)
            next_pos.append(n + len(suffix))
        past = None
        if P:
            layers = []
            template = running.past if running else next(kv for n, kv in cached if kv is not None)
            for layer, (k0, v0) in enumerate(template):
                k = k0.new_zeros((B, k0.shape[1], P, k0.shape[3]))
                v = v0.new_zeros((B, v0.shape[1], P, v0.shape[3]))
                if running:
                    k[:R, :, P - L :], v[:R, :, P - L :] = running.past[layer]
                for i, (n, kv) in enumerate(cached, start=R):
                    if n:
                        k[i, :, P - n :] = kv[layer][0][0]
                        v[i, :, P - n :] = kv[layer][1][0]
                layers.append((k, v))
            past = layers
        K = 1 + max(sizes)  # the positions whose logits are read: each prompt's last, and the trees
        attention = tree_mask(mask, S, [None] * R + trees) if K > 1 else mask
        start = time.perf_counter()
        logits, past, weights = self.adapter.step(ids, attention, pos, past, images, self.record_attention, keep=K)
        self.cost.add(B * S, time.perf_counter() - start)
        rows = (running.rows if running else []) + list(requests)
        ends = [K - 1] * R + [K - 1 - k for k in sizes]  # each row's prompt's last column, in the K kept
        last = logits[torch.arange(B), torch.tensor(ends)]
        # A row whose first token was chosen unsure waits for its second look until every other
        # row's tokens are handed out: their users read them while the look runs.
        unsure = self._unsure(last, rows) if any(r.second_look for r in requests) else []
        waiting = [
            _Unsure(rows[i], last[i], trees[i - R], logits[i, K - sizes[i - R] :], ends[i],
                    weights[i] if weights is not None else None)
            for i in unsure
        ]
        chosen, at = [], []
        for i, token in enumerate(choose_tokens(last, rows).tolist()):
            if i in unsure:
                chosen.append([])
                at.append([])
                continue
            tree = trees[i - R] if i >= R else None
            tokens, at_row, unfed, kept = self._walk(token, tree, logits[i, K - sizes[i - R] :] if tree else None, ends[i])
            chosen.append(tokens)
            at.append(at_row)
            mask[i, unfed] = 0
            next_pos[i] += kept
        batch = Batch(
            rows=rows,
            past=past,
            mask=mask,
            pos=torch.tensor(next_pos, dtype=torch.long, device=device),
            images=images,
            next_tokens=torch.zeros(B, dtype=torch.long, device=device),
        )
        batch = self._advance(batch, chosen, weights, at)
        if not waiting:
            return batch
        return self._park(batch, waiting) if self._looker is not None else self._look_later(batch, waiting)

    def _walk(
        self, token: int, tree: AnswerTree | None, tree_logits: torch.Tensor | None, end: int
    ) -> tuple[list[int], list[int], list[int], int]:
        """A prefill row's tokens from its first, `token`, on through its tree: (the tokens, the
        kept column of each one's logits, the mask columns of the nodes never fed (counted from the
        end), how many nodes were fed). `tree_logits` (k, V): the logits at the tree's k nodes."""
        if not tree:
            return [token], [end], [], 0
        k = len(tree)
        K = end + 1 + k  # the kept columns: the prompt's last, then the tree's nodes
        tokens, kept = tree.walk(token, tree_logits.argmax(dim=-1).tolist(), self.eos)
        self.trees += 1
        self.tree_nodes += k
        self.tree_answers += tokens[-1] in self.eos
        fed = set(kept)
        unfed = [j - k for j in range(k) if j not in fed]  # the nodes the model did not choose
        return tokens, [end] + [K - k + j for j in kept], unfed, len(kept)

    def _unsure(self, last: torch.Tensor, rows: list[Request]) -> list[int]:
        """The rows whose first token the rule asks again: (B, V) first-token logits -> row indices."""
        rule = self.adapter.second_look
        if rule is None:  # cleared after the request was queued
            return []
        probs = last.float().softmax(dim=-1).amax(dim=-1)
        return [i for i, r in enumerate(rows) if r.second_look and not r.tokens and float(probs[i]) < rule.below]

    def _look_later(self, batch: Batch | None, waiting: list[_Unsure]) -> Batch | None:
        """Inline: the second look of the rows `waiting` still in the batch (not stopped meanwhile),
        now, then their tokens handed out; the other rows get none this round."""
        waiting = _still_in(batch, waiting)
        if not waiting:
            return batch
        try:
            looked = self._look_again(torch.stack([w.last for w in waiting]), [w.request for w in waiting])
        except Exception as e:
            return self._look_failed(batch, waiting, e)
        return self._answer_looked(batch, waiting, looked)

    def _park(self, batch: Batch, waiting: list[_Unsure]) -> Batch | None:
        """Take the rows `waiting` still in the batch out of it and start their second look on the
        look thread; the batch's other rows go on meanwhile, and `_unpark` brings these back."""
        waiting = _still_in(batch, waiting)
        if not waiting:
            return batch
        try:
            look = self._looker.submit(self._look_beside, torch.stack([w.last for w in waiting]), [w.request for w in waiting])
        except RuntimeError:  # the look thread is shut down: closing
            return self._look_later(batch, waiting)
        look.add_done_callback(lambda _: self._queue.put(("looked", None)))  # wakes an idle scheduler
        parked = {id(w.request) for w in waiting}
        apart = [i for i, r in enumerate(batch.rows) if id(r) in parked]
        rest = [i for i, r in enumerate(batch.rows) if id(r) not in parked]
        self._parked.append(_Parked(select_rows(batch, apart, self.adapter), waiting, look))  # images copied out of the slots
        return select_rows(batch, rest, self.adapter, self._slots) if rest else None

    def _look_beside(self, last: torch.Tensor, rows: list[Request]) -> torch.Tensor:
        """`_look_again` on the look thread, as the scheduler's own thread runs: in inference mode."""
        with torch.inference_mode():
            return self._look_again(last, rows)

    def _unpark(self) -> None:
        """The parked rows whose look has ended: their tokens handed out, those still going back into
        the running batch."""
        if not self._parked:
            return
        ended, going = [], []
        for p in self._parked:  # asked once each: a look may end while this runs
            (ended if p.look.done() else going).append(p)
        self._parked = going
        for p in ended:
            try:
                looked = p.look.result()
            except Exception as e:
                back = self._look_failed(p.batch, p.waiting, e)
            else:
                back = self._answer_looked(p.batch, p.waiting, looked)
            if back is None:
                continue
            try:
                self._batch = back if self._batch is None else self._join(self._batch, back)
            except Exception as e:  # their rows are in no batch: the error must reach them here
                logger.exception("a looked row could not rejoin the batch")
                for request in back.rows:
                    request.out.put(("error", e))

    def _answer_looked(self, batch: Batch, waiting: list[_Unsure], looked: torch.Tensor) -> Batch | None:
        """The rows `waiting` (all in `batch`) given their first token from `looked` (n, V), and on
        through their trees, as any prefill row is; `batch`'s other rows get none this round. Their
        others' tokens are out already, so an error here reaches these rows alone (a retry of the
        whole prefill would answer the others twice)."""
        requests = [w.request for w in waiting]
        try:
            at_row = {id(r): i for i, r in enumerate(batch.rows)}
            B = len(batch.rows)
            chosen: list[list[int]] = [[] for _ in range(B)]
            at: list[list[int]] = [[] for _ in range(B)]
            maps = None
            if waiting[0].maps is not None:  # (B, K, N): only the waiting rows' are read
                maps = waiting[0].maps.new_zeros((B, *waiting[0].maps.shape))
            for w, token in zip(waiting, choose_tokens(looked, requests).tolist()):
                i = at_row[id(w.request)]
                chosen[i], at[i], unfed, kept = self._walk(token, w.tree, w.tree_logits, w.end)
                batch.mask[i, unfed] = 0
                batch.pos[i] += kept
                if maps is not None:
                    maps[i] = w.maps
        except Exception as e:
            return self._look_failed(batch, waiting, e)
        return self._advance(batch, chosen, maps, at)

    def _look_failed(self, batch: Batch, waiting: list[_Unsure], error: Exception) -> Batch | None:
        """The error to the rows `waiting`, which leave `batch`; the batch's other rows go on."""
        logger.error("second look failed", exc_info=error)
        failed = {id(w.request) for w in waiting}
        for w in waiting:
            w.request.out.put(("error", error))
        keep = [i for i, r in enumerate(batch.rows) if id(r) not in failed]
        return select_rows(batch, keep, self.adapter, self._slots) if keep else None

    def _look_again(self, last: torch.Tensor, rows: list[Request]) -> torch.Tensor:
        """(n, V) first-token logits of `rows` -> (n, V) their mean log-probability over each row's
        image and the rule's views of it (one more forward for all of them, from no cache: their
        cached keys/values are of the image as it was)."""
        rule = self.adapter.second_look
        if rule is None:  # cleared after the rows were found unsure: their own logits alone
            return last.float().log_softmax(dim=-1)
        self.second_looks += len(rows)
        size = self.adapter.input_size()
        views = [rule.views(row.image, size) for row in rows]
        prompts = [row.prompt for row, v in zip(rows, views) for _ in v]
        device = self.adapter.device
        B, S = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, S), self.pad, dtype=torch.long, device=device)
        pos = torch.zeros((B, S), dtype=torch.long, device=device)
        mask = torch.zeros((B, S), dtype=torch.long, device=device)
        for j, prompt in enumerate(prompts):  # right-aligned, as in `_prefill`
            ids[j, S - len(prompt) :] = torch.tensor(prompt)
            pos[j, S - len(prompt) :] = torch.arange(len(prompt))
            mask[j, S - len(prompt) :] = 1
        images = self.adapter.stack_images(self.adapter.encode_images([v for vs in views for v in vs]))
        seen, _, _ = self.adapter.step(ids, mask, pos, None, images, record=False)
        looked, start = [], 0
        for i, vs in enumerate(views):
            looked.append(mean_log_probs(torch.cat([last[i : i + 1].float(), seen[start : start + len(vs), -1].float()])))
            start += len(vs)
        return torch.stack(looked)

    def _trees(self, requests: list[Request], suffixes: list[list[int]], running: int) -> list[AnswerTree | None]:
        """Each newcomer's tree of likely answers (`answer_tree.py`), as large as the fitted cost of a
        forward says pays. A node costs a position in every row of the forward (their new columns
        are right-aligned); an answer that ends in its prefill saves its row's position in the next
        decode step, and the whole step when no row is left for it. A tree's chance of holding its
        answer is taken to be the share of the kind's earlier answers it holds."""
        none: list[AnswerTree | None] = [None] * len(requests)
        fit = self.cost.fit() if self.likely is not None else None
        if fit is None:
            return none
        fixed, per_position = fit
        candidates = [self.likely.candidates(r.kind) if r.kind and not r.settings.do_sample else [] for r in requests]
        if not any(candidates):
            return none
        rows = running + len(requests)
        others = len(self._batch.rows) if self._batch is not None else running  # rows the next step has anyway
        width = max(map(len, suffixes))
        best, best_gain = none, 0.0
        for budget in (1, 2, 4, 8, 16, 32):  # nodes a tree at most (`LikelyAnswers.max_tokens` is 33)
            trees = [
                grow_tree(c, self.eos, budget, r.settings.max_new_tokens - 1) if c else None
                for c, r in zip(candidates, requests)
            ]
            extra = max(len(s) + (len(t) if t else 0) for s, t in zip(suffixes, trees)) - width
            held = [t.covered if t else 0.0 for t in trees]
            gain = per_position * sum(held) + (0.0 if others else fixed * math.prod(held)) - per_position * rows * extra
            if gain > best_gain:
                best, best_gain = trees, gain
        return [t if t else None for t in best]

    def _decode(self, batch: Batch) -> Batch | None:
        """One step: each row feeds its next token and, a greedy row, its draft (`drafts.py`) after it;
        each row keeps the drafted tokens the model chose too, and the model's token after them."""
        self.steps += 1
        B, L = len(batch.rows), batch.mask.shape[1]
        drafts = self._drafts(batch)
        K = 1 + max(map(len, drafts))  # new columns; a row with a shorter draft is left-padded
        if K == 1:
            ids, pos, new = batch.next_tokens[:, None], batch.pos[:, None], batch.mask.new_ones((B, 1))
        else:
            fed = [[self.pad] * (K - 1 - len(d)) + [t, *d] for t, d in zip(batch.next_tokens.tolist(), drafts)]
            ids = torch.tensor(fed, device=batch.mask.device)
            start = torch.tensor([K - 1 - len(d) for d in drafts], device=batch.mask.device)[:, None]  # (B, 1)
            columns = torch.arange(K, device=batch.mask.device)[None]  # (1, K)
            new = (columns >= start).long()
            pos = batch.pos[:, None] + (columns - start).clamp(min=0)
        mask = torch.cat([batch.mask, new], dim=1)
        try:
            begun = time.perf_counter()
            logits, past, weights = self.adapter.step(
                ids, mask, pos, batch.past, batch.images, self.record_attention, keep=K
            )
            self.cost.add(B * K, time.perf_counter() - begun)
        except Exception:
            if len(batch.rows) == 1:
                batch.rows[0].out.put(("error", _last_error()))
                return None
            return self._decode_apart(batch)
        last = choose_tokens(logits[:, -1], batch.rows).tolist()  # a row without a draft: its token
        greedy = logits.argmax(dim=-1).tolist() if K > 1 else None  # (B, K)
        chosen, at, advanced = [], [], []
        for i, d in enumerate(drafts):
            if not d:
                chosen.append([last[i]])
                at.append([K - 1])
                advanced.append(1)
                continue
            s = K - 1 - len(d)  # the row's first new column: its next token, then the draft
            g = greedy[i][s:]
            m = 0
            while m < len(d) and g[m] == d[m]:
                m += 1
            chosen.append(g[: m + 1])
            at.append(list(range(s, s + m + 1)))
            advanced.append(m + 1)
            mask[i, L + s + 1 + m :] = 0  # the drafted tokens the model did not choose were never fed
            self.drafted += len(d)
            self.accepted += m
        batch.past, batch.mask = past, mask
        batch.pos = batch.pos + torch.tensor(advanced, device=batch.pos.device)
        return self._advance(batch, chosen, weights, at)

    def _drafts(self, batch: Batch) -> list[list[int]]:
        """Each row's draft: none for a sampling row; as many columns as the fitted cost of a forward
        says pay for themselves, counting every drafted token as kept."""
        if self.drafts is None:
            return [[] for _ in batch.rows]
        drafts = []
        for r in batch.rows:
            limit = 0 if r.settings.do_sample else min(self.max_draft, r.settings.max_new_tokens - len(r.tokens) - 1)
            drafts.append(self.drafts.draft(r.tokens, limit, self.eos) if limit > 0 else [])
        longest = max(map(len, drafts))
        fit = self.cost.fit()
        if longest and fit is not None:
            fixed, per_position = fit
            rows = len(drafts)

            def tokens_per_second(width: int) -> float:
                return sum(1 + min(len(d), width - 1) for d in drafts) / (fixed + per_position * rows * width + 1e-9)

            width = max(range(1, longest + 2), key=tokens_per_second)
            drafts = [d[: width - 1] for d in drafts]
        return drafts

    def _decode_apart(self, batch: Batch) -> Batch | None:
        """A batched step failed: step each row alone, so only the failing request sees the error."""
        merged = None
        for i in range(len(batch.rows)):
            row = self._decode(select_rows(batch, [i], self.adapter))
            if row is not None:
                merged = row if merged is None else merge_batches(merged, row, self.adapter)
        return merged

    def _advance(
        self, batch: Batch, chosen: list[list[int]], weights: torch.Tensor | None, at: list[list[int]]
    ) -> Batch | None:
        """Hand each row its chosen tokens (`chosen[i]`, in order), drop the rows that are done.
        `weights` (B, K, N): the maps of the step's last K positions; row i's j-th token was chosen at
        column `at[i][j]` of them.

        Handing out comes last: each token wakes a request thread, which then contends for the GIL
        with this thread's own bookkeeping (py-spy at 16 users: a quarter of this function's samples
        were in the queue's put and notify), where the next forward gives the GIL up anyway."""
        maps = weights.float().cpu() if weights is not None else None
        keep, events = [], []
        try:
            for i, (request, tokens) in enumerate(zip(batch.rows, chosen)):
                ended = None
                for j, token in enumerate(tokens):
                    if maps is not None:  # a copy: a view would keep the whole step's (B, K, N) alive
                        request.attention.append(maps[i, at[i][j]].clone())
                    request.tokens.append(token)
                    events.append((request, ("token", token)))
                    if token in self.eos or len(request.tokens) >= request.settings.max_new_tokens:
                        ended = "eos" if token in self.eos else "length"
                        break
                if ended is not None:
                    self._remember(batch, i, request)
                    if self.drafts is not None:
                        self.drafts.learn(request.tokens)
                    if self.likely is not None and request.kind:
                        self.likely.learn(request.kind, request.tokens)
                    events.append((request, ("end", ended)))
                elif request.cancel.is_set():
                    events.append((request, ("end", "stopped")))
                else:
                    keep.append(i)
            # A row given no token this round (waiting for a second look, or another's turn) keeps its next.
            batch.next_tokens = torch.tensor(
                [tokens[-1] if tokens else t for tokens, t in zip(chosen, batch.next_tokens.tolist())],
                device=batch.next_tokens.device,
            )
            if not keep:
                return None
            return batch if len(keep) == len(batch.rows) else select_rows(batch, keep, self.adapter, self._slots)
        finally:  # even when the bookkeeping fails, every token chosen reaches its request first
            for request, event in events:
                request.out.put(event)

    def _remember(self, batch: Batch, i: int, request: Request) -> None:
        """Keep the finished row's keys/values: the conversation's next turn starts from them."""
        ids = request.prompt + request.tokens[:-1]  # the last token chosen was never fed
        real = batch.mask[i].nonzero().squeeze(1)  # the row's fed columns (not its padding or unchosen drafts)
        if len(real) != len(ids):
            return
        # index_select copies once, into tensors of their own: a boolean index then `clone` copied twice
        # (123 against 222 us a finished row, 4 layers of a 16-row batch).
        layers = [(k[i : i + 1].index_select(2, real), v[i : i + 1].index_select(2, real)) for k, v in batch.past]
        self.prefixes.put(request.image_key, ids, layers)

    def _groups(self, requests: list[Request]) -> list[list[Request]]:
        """Requests one `generate` can answer together: a family that can stack inputs (`collate`) and
        the same settings."""
        if getattr(self.adapter, "collate", None) is None:
            return [[r] for r in requests]
        groups: dict[tuple, list[Request]] = {}
        for r in requests:
            groups.setdefault(tuple(sorted(r.settings.generate_kwargs().items())), []).append(r)
        return list(groups.values())

    def _generate(self, rows: list[Request]) -> None:
        """The family's own `generate` for `rows` (one, or a left-padded batch): each row's tokens go to
        its queue as they come, and each row ends when it does, not when the batch does."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
                return torch.tensor([r.cancel.is_set() for r in rows], device=input_ids.device)

        streamer = RowsStreamer(rows, self.eos)
        try:
            inputs = rows[0].inputs if len(rows) == 1 else self.adapter.collate([r.inputs for r in rows])
            self.adapter.generate(
                inputs,
                self._image_states(rows) if self.adapter.keeps_images else None,
                streamer.looked if self.record_attention else None,
                **self.adapter.generate_kwargs(),
                **rows[0].settings.generate_kwargs(),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([Stop()]),
            )
        except Exception as e:
            if len(rows) == 1:
                streamer.fail(e)
                return
            # Whatever broke the batch, the rows that have nothing yet are answered alone, so only the
            # request that fails alone sees the error; a row already streaming cannot start over.
            streamer.fail(e, only_started=True)
            for r in rows:
                if not r.tokens:
                    self._generate([r])
            return
        streamer.finish()


def _last_error() -> BaseException:
    import sys

    return sys.exc_info()[1] or RuntimeError("generation failed")


def _still_in(batch: Batch | None, waiting: list[_Unsure]) -> list[_Unsure]:
    """The rows `waiting` that are still in `batch` (a row stopped meanwhile has left it)."""
    rows = {id(r) for r in batch.rows} if batch is not None else set()
    return [w for w in waiting if id(w.request) in rows]
