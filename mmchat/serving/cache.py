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

    def put(self, key: Any, value: Any) -> None:
        size = nbytes(value)
        with self._lock:
            self._drop(key)
            if size > self.max_bytes:  # would evict everything and still not fit
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                oldest = next(iter(self._items))
                self._drop(oldest)
                self.evictions += 1

    def keys(self) -> list[Any]:
        with self._lock:
            return list(self._items)

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
    """

    def __init__(self, max_bytes: int):
        self.entries = LRUBytes(max_bytes)

    def longest(self, image: str, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest cached prefix of `ids` for `image`, at most len(ids) - 1 tokens (one is left to run)."""
        best, best_key = 0, None
        for key in self.entries.keys():
            if key[0] != image:
                continue
            n = common_prefix(key[1], ids, len(ids) - 1)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        layers = self.entries.get(best_key)
        if layers is None:  # evicted meanwhile
            return 0, None
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]

    def put(self, image: str, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        ids = tuple(ids)
        # The conversation moved on: its shorter entries are prefixes of this one, and no longer needed.
        self.entries.pop_where(lambda key: not (key[0] == image and ids[: len(key[1])] == key[1]))
        self.entries.put((image, ids), layers)

    def release(self, images: Iterable[str]) -> None:
        images = set(images)
        self.entries.pop_where(lambda key: key[0] not in images)


def common_prefix(a: tuple[int, ...] | list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
