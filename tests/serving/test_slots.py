"""The scheduler's image slots: rows join and leave, each row keeps its own image, nothing else moves."""

from __future__ import annotations

import torch

from mmchat.serving.slots import ImageSlots


class Adapter:
    """A family whose image state is one (B, N, D) tensor and one pair of keys/values."""

    @staticmethod
    def image_tensors(state: dict) -> list[torch.Tensor]:
        return [state["x"], state["k"], state["v"]]

    @staticmethod
    def images_from_tensors(like: dict, tensors: list[torch.Tensor]) -> dict:
        return dict(zip(("x", "k", "v"), tensors))


def image(i: int) -> dict:
    """Image i's state: every value is i, so a row shows whose it is."""
    return {"x": torch.full((1, 3, 2), float(i)), "k": torch.full((1, 2, 3, 2), float(i)), "v": torch.full((1, 2, 3, 2), -float(i))}


def whose(view: dict) -> list[int]:
    rows = [int(r[0, 0]) for r in view["x"]]
    for t, sign in (("k", 1), ("v", -1)):
        assert [int(sign * r.flatten()[0]) for r in view[t]] == rows  # every tensor's row moved together
    return rows


def test_rows_join_and_leave_keeping_their_own_images() -> None:
    slots = ImageSlots(Adapter())
    rows = [0, 1, 2, 3, 4]  # which image each batch row shows
    view = slots.reset([image(i) for i in rows])
    assert whose(view) == rows
    for step in range(30):  # as a busy scheduler: some leave, some join, every step
        keep = [i for i in range(len(rows)) if (i + step) % 3]
        order, view = slots.keep(keep)
        assert sorted(order) == keep
        rows = [rows[i] for i in order]
        assert whose(view) == rows
        new = [100 + 2 * step, 101 + 2 * step]
        view = slots.append([image(i) for i in new])
        rows += new
        assert whose(view) == rows
    assert slots.owns(view) and not slots.owns(image(0))


def test_a_join_writes_only_the_newcomers() -> None:
    slots = ImageSlots(Adapter())
    first = slots.reset([image(i) for i in range(4)])
    second = slots.append([image(9)])
    # The running rows were not copied: the new view starts where the old one did, in the same buffer.
    assert second["k"].data_ptr() == first["k"].data_ptr()
    assert whose(first) == [0, 1, 2, 3] and whose(second) == [0, 1, 2, 3, 9]
    # A row leaving moves one row (the last) into its slot; the others stay where they are.
    order, third = slots.keep([0, 2, 3, 4])
    assert order == [0, 4, 2, 3] and whose(third) == [0, 9, 2, 3]
    assert third["k"].data_ptr() == first["k"].data_ptr()


def test_reset_never_writes_where_an_older_batch_looks() -> None:
    slots = ImageSlots(Adapter())
    old = slots.reset([image(1), image(2)])
    slots.reset([image(7)])
    slots.append([image(8)])
    assert whose(old) == [1, 2]
