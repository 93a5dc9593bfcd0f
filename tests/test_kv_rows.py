"""Row selection in the decode loop's cache: where each next row goes, and the in-place copy."""

from __future__ import annotations

import torch

from autodeco_cli.engine.cpu_inference import ZERO_TAIL
from autodeco_cli.engine.generation import place_rows
from autodeco_cli.engine.kv_cache import GrowingLayer, append_rows, select_rows


def test_first_children_keep_their_parents_row_and_the_rest_fill_freed_rows():
    assert place_rows([0, 1, 2]) == [0, 1, 2]
    # row 0 split in two, row 2 finished: the second child of 0 takes row 2
    assert place_rows([0, 0, 1, 3]) == [0, 2, 1, 3]
    # rows 0 and 1 finished, 3 split: its children and row 2 fill rows 0-2
    assert place_rows([2, 3, 3]) == [1, 2, 0]
    for parents in ([0, 0, 0, 1], [1, 1, 2, 4, 4, 4], [5]):
        order = place_rows(parents)
        assert sorted(order) == list(range(len(parents)))
        for parent in set(parents) & set(range(len(parents))):
            assert parents[order[parent]] == parent  # a surviving row stays where it was


class _Cache:
    def __init__(self, layers):
        self.layers = layers


def _layer_with(states: list[torch.Tensor]) -> GrowingLayer:
    layer = GrowingLayer()
    for state in states:
        layer.update(state, state * 2)
    return layer


def _zero_tail_is_zero(view: torch.Tensor) -> bool:
    tail = getattr(view, ZERO_TAIL)
    full = torch.as_strided(
        view, (*view.shape[:2], view.shape[2] + tail, view.shape[3]), view.stride(), view.storage_offset()
    )
    return not full[:, :, view.shape[2] :].any()


def test_select_rows_moves_rows_in_place_and_gathers_only_past_the_buffer():
    generator = torch.Generator().manual_seed(0)
    states = [torch.randn(4, 2, n, 3, generator=generator) for n in (6, 1)]
    layer = _layer_with(states)
    expected = torch.cat(states, dim=-2)
    buffer = layer.keys.untyped_storage().data_ptr()
    for sources in ([0, 3, 2], [2, 2, 0, 1], [0, 0, 1, 1, 2, 3, 3]):  # shrink, split, grow past the buffer
        select_rows(_Cache([layer]), sources)
        expected = expected[sources]
        assert torch.equal(layer.keys, expected) and torch.equal(layer.values, expected * 2)
        assert _zero_tail_is_zero(layer.keys) and _zero_tail_is_zero(layer.values)
        if len(sources) <= 4:
            assert layer.keys.untyped_storage().data_ptr() == buffer  # moved within the buffer
        step = torch.randn(len(sources), 2, 1, 3, generator=generator)
        layer.update(step, step * 2)
        expected = torch.cat([expected, step], dim=-2)
        assert torch.equal(layer.keys, expected) and _zero_tail_is_zero(layer.keys)
    # the grown buffer kept room for more rows: a further split copies in place
    buffer = layer.keys.untyped_storage().data_ptr()
    select_rows(_Cache([layer]), [0, 1, 2, 3, 4, 5, 6, 6])
    assert layer.keys.untyped_storage().data_ptr() == buffer
    assert torch.equal(layer.keys, expected[[0, 1, 2, 3, 4, 5, 6, 6]])


def test_joining_rows_are_written_into_spare_rows_left_padded():
    generator = torch.Generator().manual_seed(1)
    states = [torch.randn(3, 2, n, 3, generator=generator) for n in (5, 1)]
    layer = _layer_with(states)  # a buffer of 3 rows plus room for 4 more
    expected = torch.cat(states, dim=-2)
    select_rows(_Cache([layer]), [2, 0])  # a row leaves: its old data stays in a spare row
    expected = expected[[2, 0]]
    buffer = layer.keys.untyped_storage().data_ptr()
    new = torch.randn(2, 2, 4, 3, generator=generator)
    assert append_rows(_Cache([layer]), [(new, new * 2)])
    padded = torch.cat([torch.zeros(2, 2, 2, 3), new], dim=-2)
    assert torch.equal(layer.keys, torch.cat([expected, padded]))
    assert torch.equal(layer.values, torch.cat([expected * 2, padded * 2]))
    assert layer.keys.untyped_storage().data_ptr() == buffer
    assert _zero_tail_is_zero(layer.keys) and _zero_tail_is_zero(layer.values)
    step = torch.randn(4, 2, 1, 3, generator=generator)
    layer.update(step, step)
    assert torch.equal(layer.keys, torch.cat([torch.cat([expected, padded]), step], dim=-2))
    # longer than the cache, or more rows than the buffer holds: refused, nothing changed
    before = layer.keys.clone()
    assert not append_rows(_Cache([layer]), [(torch.zeros(1, 2, 9, 3), torch.zeros(1, 2, 9, 3))])
    assert not append_rows(_Cache([layer]), [(torch.zeros(4, 2, 2, 3), torch.zeros(4, 2, 2, 3))])
    assert torch.equal(layer.keys, before)
