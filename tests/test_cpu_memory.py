"""Moving weights into huge pages keeps their values, identities and ties; collapsing memory into
huge pages where it lies keeps its values."""

from __future__ import annotations

import platform

import pytest
import torch

from autodeco_cli.engine.cpu_memory import (
    HUGE_PAGE,
    collapse_to_huge_pages,
    huge_pages_allowed,
    move_to_huge_pages,
    whole_huge_pages,
)


@pytest.mark.skipif(
    platform.system() != "Linux" or not huge_pages_allowed(), reason="needs Linux transparent huge pages"
)
def test_parameters_move_into_one_block_with_values_identity_and_ties_kept():
    embedding = torch.nn.Embedding(50, 24).to(torch.bfloat16)
    head = torch.nn.Linear(24, 50, bias=False).to(torch.bfloat16)
    head.weight = embedding.weight  # tied, as in the default model
    other = torch.nn.Linear(24, 7, bias=False).to(torch.bfloat16)
    plain = torch.nn.Linear(24, 7).float()  # not bf16: stays where it is
    before = {name: p.detach().clone() for name, p in (("tied", head.weight), ("other", other.weight))}
    identities = (id(head.weight), id(other.weight))
    plain_pointer = plain.weight.data_ptr()

    moved = move_to_huge_pages([head.weight, embedding.weight, other.weight, plain.weight])

    assert moved == 2  # the tied parameter once
    assert (id(head.weight), id(other.weight)) == identities
    assert head.weight is embedding.weight
    assert torch.equal(head.weight, before["tied"]) and torch.equal(other.weight, before["other"])
    assert head.weight.untyped_storage().data_ptr() == other.weight.untyped_storage().data_ptr()
    assert head.weight.data_ptr() % 64 == 0 and other.weight.data_ptr() % 64 == 0
    assert plain.weight.data_ptr() == plain_pointer


def test_huge_pages_off_by_environment(monkeypatch):
    monkeypatch.setenv("AUTODECO_HUGEPAGES", "0")
    layer = torch.nn.Linear(8, 8, bias=False).to(torch.bfloat16)
    pointer = layer.weight.data_ptr()
    assert move_to_huge_pages([layer.weight]) == 0
    assert layer.weight.data_ptr() == pointer


def test_only_whole_huge_pages_inside_nearby_spans_are_collapsed():
    page = HUGE_PAGE
    # two spans a few bytes apart merge; one far away stays alone; one inside a single page has none
    spans = [(page + 100, page), (2 * page + 200, 2 * page), (10 * page + 1, page - 2), (20 * page, 3 * page)]
    assert whole_huge_pages(spans) == [(2 * page, 4 * page), (20 * page, 23 * page)]
    assert whole_huge_pages([]) == []


def test_collapsing_keeps_the_values(monkeypatch):
    data = torch.arange(3 * HUGE_PAGE // 4, dtype=torch.float32)  # 6 MiB: at least two whole huge pages
    before = data.clone()
    covered = collapse_to_huge_pages([(data.data_ptr(), data.numel() * 4)])
    assert covered % HUGE_PAGE == 0 and covered <= data.numel() * 4  # 0 where the kernel refuses
    assert torch.equal(data, before)
    monkeypatch.setenv("AUTODECO_HUGEPAGES", "0")
    assert collapse_to_huge_pages([(data.data_ptr(), data.numel() * 4)]) == 0
