"""Byte-bounded LRU caches for work a conversation's turns share: image features and prefix keys/values.

Only the scheduler thread touches them (it owns the model), but `release` may come from any thread,
so every method takes the lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
from PIL import Image


def image_key(image: Image.Image, model_id: str) -> str:
    """Content hash of an image (pixels, size, mode) and the model that will read it."""
    digest = hashlib.sha1(image.tobytes())
    digest.update(f"{image.size}{image.mode}{model_id}".encode())
    return digest.hexdigest()


def nbytes(value: Any) -> int:
    """Bytes of every tensor inside `value` (tensors, tuples, lists, dicts, objects with __dict__)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return nbytes(vars(value))
    return 0


class LRUBytes:
    """key -> value, least recently used evicted first once the values' tensors pass `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._items:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Any, value: Any) -> list[Any]:
        """Keep `value` (unless it alone is over the bound); returns the keys evicted to make room."""
        size = nbytes(value)
        evicted = []
        with self._lock:
            self._drop(key)
            if size > self.max_bytes:  # would evict everything and still not fit
                return evicted
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                oldest = next(iter(self._items))
                self._drop(oldest)
                evicted.append(oldest)
                self.evictions += 1
        return evicted

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return key in self._items

    def keys(self) -> list[Any]:
        with self._lock:
            return list(self._items)

    def pop(self, key: Any) -> None:
        with self._lock:
            self._drop(key)

    def pop_where(self, keep: Any) -> None:
        """Drop every entry whose key `keep(key)` rejects."""
        with self._lock:
            for key in [k for k in self._items if not keep(k)]:
                self._drop(key)

    def _drop(self, key: Any) -> None:
        if key in self._items:
            self._bytes -= self._items.pop(key)[1]


class PrefixCache:
    """Per image, the keys/values of token sequences already run: a follow-up turn starts from them.

    An entry is (image key, token ids) -> per-layer (k, v) of shape (1, kv heads, T, head dim).
    A longer sequence of the same conversation replaces the shorter ones it extends.

    The entries are also listed by image, so that a lookup and a put read only the entries of the
    request's image: scanning every entry, a full cache (1,052 entries in 128 MB) cost 0.27 ms a
    lookup and 0.32 ms a put on the scheduler's thread, against 0.04 and 0.02 ms this way.
    """

    def __init__(self, max_bytes: int):
        self.entries = LRUBytes(max_bytes)
        self._by_image: dict[str, set[tuple[int, ...]]] = {}  # image key -> the ids of its entries
        self._lock = threading.Lock()  # the listing; `release` may come from any thread

    def longest(self, image: str, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest cached prefix of `ids` for `image`, at most len(ids) - 1 tokens (one is left to run)."""
        with self._lock:
            candidates = list(self._by_image.get(image, ()))
        best, best_ids = 0, None
        for cached in candidates:
            n = common_prefix(cached, ids, len(ids) - 1)
            if n > best:
                best, best_ids = n, cached
        if best_ids is None:
            return 0, None
        layers = self.entries.get((image, best_ids))
        if layers is None:  # evicted meanwhile
            return 0, None
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]

    def put(self, image: str, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        ids = tuple(ids)
        with self._lock:
            listed = self._by_image.setdefault(image, set())
            # The conversation moved on: its shorter entries are prefixes of this one, and no longer needed.
            for shorter in [c for c in listed if ids[: len(c)] == c]:
                self.entries.pop((image, shorter))
                listed.discard(shorter)
            evicted = self.entries.put((image, ids), layers)
            if (image, ids) in self.entries:
                listed.add(ids)
            for old_image, old_ids in evicted:
                self._unlist(old_image, old_ids)
            if not listed:
                self._by_image.pop(image, None)

    def release(self, images: Iterable[str]) -> None:
        with self._lock:
            for image in set(images):
                for ids in self._by_image.pop(image, ()):
                    self.entries.pop((image, ids))

    def _unlist(self, image: str, ids: tuple[int, ...]) -> None:
        listed = self._by_image.get(image)
        if listed is not None:
            listed.discard(ids)
            if not listed:
                del self._by_image[image]


def common_prefix(a: tuple[int, ...] | list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
