"""The prefix cache: a conversation's next turn starts from its keys/values, within the byte bound."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from mmchat.serving.cache import PrefixCache, nbytes
from mmchat.serving.loading import load_model

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "mmchat-shapes"


def layers(ids: list[int], value: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers' keys/values for `ids`, every number `value` (so a lookup shows whose it found)."""
    t = torch.full((1, 1, len(ids), 2), value)
    return [(t, t.clone()) for _ in range(2)]


def entry_bytes(n: int) -> int:
    return 4 * 2 * 2 * n * 2  # 2 layers x (k, v) x n tokens x 2 values, fp32


def test_follow_up_finds_its_own_conversation_among_others_on_the_same_image():
    cache = PrefixCache(1 << 20)
    cache.put("shapes", [1, 2, 3, 10], layers([1, 2, 3, 10], 1.0))  # user A: turn 1 asked "10"
    cache.put("shapes", [1, 2, 3, 20], layers([1, 2, 3, 20], 2.0))  # user B, the same example image
    cache.put("cheetah", [1, 2, 3, 10], layers([1, 2, 3, 10], 3.0))

    n, kv = cache.longest("shapes", [1, 2, 3, 20, 7, 8])  # B's follow-up
    assert n == 4 and kv[0][0].unique().tolist() == [2.0]
    n, kv = cache.longest("shapes", [1, 2, 3, 10, 7])  # A's
    assert n == 4 and kv[0][0].unique().tolist() == [1.0]
    assert kv[0][0].shape[2] == 4
    assert cache.longest("shapes", [1, 2, 3, 10])[0] == 3  # one token is always left to run
    assert cache.longest("dog", [1, 2, 3, 10, 7]) == (0, None)


def test_a_longer_turn_replaces_the_shorter_entries_it_extends():
    cache = PrefixCache(1 << 20)
    cache.put("shapes", [1, 2], layers([1, 2], 1.0))
    cache.put("shapes", [1, 2, 3, 4], layers([1, 2, 3, 4], 2.0))
    assert len(cache.entries) == 1
    assert cache.longest("shapes", [1, 2, 9])[1][0][0].unique().tolist() == [2.0]


def test_evicted_conversations_miss_and_the_listing_does_not_grow_past_the_entries():
    ids = list(range(8))
    cache = PrefixCache(10 * entry_bytes(len(ids)))  # room for 10 conversations
    for i in range(1000):  # a busy day: far more conversations than fit
        cache.put(f"image{i}", ids, layers(ids, float(i)))
    assert len(cache.entries) == 10 and cache.entries.bytes <= 10 * entry_bytes(len(ids))
    # Evicted entries leave the per-image listing too: it would otherwise grow with every image ever seen.
    assert sum(map(len, cache._by_image.values())) == 10
    assert cache.longest("image5", ids + [1]) == (0, None)
    n, kv = cache.longest("image999", ids + [1])
    assert n == len(ids) and kv[0][0].unique().tolist() == [999.0]


def test_release_forgets_the_images_named_only():
    cache = PrefixCache(1 << 20)
    for image in ("a", "b"):
        cache.put(image, [1, 2, 3], layers([1, 2, 3], 1.0))
        cache.put(image, [1, 5, 6], layers([1, 5, 6], 2.0))
    cache.release(["a"])
    assert cache.longest("a", [1, 2, 3, 4]) == (0, None)
    assert cache.longest("b", [1, 5, 6, 4])[0] == 3
    assert len(cache.entries) == 2
    cache.put("a", [1, 2, 3], layers([1, 2, 3], 1.0))  # a cleared conversation starts again
    assert cache.longest("a", [1, 2, 3, 4])[0] == 3


def test_an_entry_over_the_whole_bound_is_not_kept_nor_listed():
    cache = PrefixCache(entry_bytes(2))
    cache.put("a", [1, 2, 3, 4], layers([1, 2, 3, 4], 1.0))
    assert len(cache.entries) == 0 and cache._by_image == {}
    assert cache.longest("a", [1, 2, 3, 4, 5]) == (0, None)


def test_the_shipped_models_image_cache_holds_every_conversation_the_app_answers_at_once():
    """With room for fewer, follow-ups under full load encode their image again (64 users in a
    64 MB cache: 104-111 images encoded for 64)."""
    adapter = load_model(str(SHIPPED), quantization="none", device="cpu")
    state = adapter.encode_images([Image.new("RGB", (96, 96), "white")])[0]
    assert adapter.image_cache_bytes >= adapter.default_concurrency * nbytes(state)


def test_each_encoded_image_holds_only_its_own_memory():
    """The image cache counts a state's bytes: a state that was a view into its batch would keep the
    whole batch alive (15 images' keys/values behind each one) while counted as one image."""
    adapter = load_model(str(SHIPPED), quantization="none", device="cpu")
    images = [Image.new("RGB", (96, 96), colour) for colour in ("white", "red", "blue")]
    states = adapter.encode_images(images)
    alone = adapter.encode_images(images[1:2])[0]
    for state in states:
        for t in [state.image_states, *(t for kv in state.key_values.values() for t in kv)]:
            assert t.shape[0] == 1 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    # Each is its own image's: the red one encoded alone, to bf16 rounding, and far from the others.
    for layer, (k, v) in alone.key_values.items():
        torch.testing.assert_close(states[1].key_values[layer][0], k, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(states[1].key_values[layer][1], v, atol=2e-2, rtol=2e-2)
        assert (states[0].key_values[layer][1] - v).abs().max() > 0.1
