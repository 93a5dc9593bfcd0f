"""`autodeco merge` / `autodeco split`: heads + base into one serving folder, and back again."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import load_heads
from autodeco_cli.engine.export import merge, split
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.models import load_base_model
from autodeco_cli.engine.requests import build_requests

PROMPTS = ["What is 2 + 3?", "Tell me a joke."]


def _generate(lm, heads):
    engine = GenerationEngine(lm, heads)
    requests = build_requests(lm.tokenizer, PROMPTS, make_strategy("autodeco"), n=2, seed=4)
    out = [
        (g.token_ids, [round(t.temperature, 5) for t in g.trace])
        for g in engine.generate(requests, max_new_tokens=6, batch_size=4, trace=True)
    ]
    engine.close()
    return out


def test_merge_then_split_round_trips_and_the_merged_folder_runs(tiny_model_dir, tiny_heads_dir, tmp_path):
    merged = merge(str(tiny_model_dir), str(tiny_heads_dir), tmp_path / "merged")
    # the merged folder is loadable by autodeco itself: base model and heads from one path
    merged_lm = load_base_model(str(merged), device="cpu")
    merged_heads = load_heads(merged, expected_hidden_size=merged_lm.hidden_size)
    base_lm = load_base_model(str(tiny_model_dir), device="cpu")
    heads = load_heads(tiny_heads_dir)
    assert _generate(merged_lm, merged_heads) == _generate(base_lm, heads)

    base_out, heads_out = split(merged, tmp_path / "base", tmp_path / "heads")
    split_lm = load_base_model(str(base_out), device="cpu")
    original = base_lm.model.state_dict()
    for key, value in split_lm.model.state_dict().items():
        torch.testing.assert_close(value, original[key], rtol=0, atol=0, msg=key)
    for key, value in load_heads(heads_out).state_dict().items():
        torch.testing.assert_close(value, heads.state_dict()[key], rtol=0, atol=0, msg=key)


def test_merge_refuses_a_non_empty_output_folder(tiny_model_dir, tiny_heads_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="not empty"):
        merge(str(tiny_model_dir), str(tiny_heads_dir), tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "user data"


def test_merge_refuses_heads_for_another_hidden_size(tiny_model_dir, wrong_heads_dir, tmp_path):
    with pytest.raises(UserError):
        merge(str(tiny_model_dir), str(wrong_heads_dir), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
