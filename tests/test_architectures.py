"""The paper's architectures through every path of our engine (not vLLM), on tiny random models.

For llama, mistral, qwen2, qwen3, qwen3_moe, gpt_oss and gemma3 (tiny_architectures.py): greedy
decoding token-exact against transformers' own generate() (batched rows, prompts sharing a
prefix, rows joining), sampled and autodeco rows that split and leave, head training, traces,
`eval`/`grid-search`/`generate` through the CLI, merge/split and the official merged layout, and
which bf16 CPU fast path each one runs, checked against transformers' bf16 forward. The README's
"Paper-scale architectures" matrix is what this file shows.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from autodeco_cli.core import attention_kernel, cpu_kernels
from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.heads import fresh_heads, load_heads
from autodeco_cli.engine import cpu_inference, generation, lean_kernels, prefix_cache
from autodeco_cli.engine.cpu_inference import DECODE_ATTENTION, PackedLinear, onednn_packs_bf16
from autodeco_cli.engine.export import merge, split
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.models import LoadedModel, load_base_model
from autodeco_cli.engine.requests import build_requests
from conftest import build_merged_folder, build_tiny_tokenizer, write_jsonl
from tiny_architectures import ARCHITECTURES, HIDDEN, SLIDING, WINDOW, save_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

INSTRUCTION = "Once upon a time there was a small model that liked to count: "
PROMPTS = [INSTRUCTION + q for q in ("one two", "The quick brown fox jumps", "hi", "What is 27 + 82?")]
MAX_NEW = 16
# sliding-window caches keep only the window: rows can neither join a running batch nor start
# from a shared prefix (whose padding sits mid-row, where a window would count it), so those
# models decode in whole batches with full prefills
JOINS = {name: name not in SLIDING for name in ARCHITECTURES}
# gpt_oss's attention sinks need transformers' eager attention: the bf16 decode attention (an SDPA
# replacement) leaves it alone
BF16_ATTENTION = {name: "eager" if name == "gpt_oss" else DECODE_ATTENTION for name in ARCHITECTURES}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request, tmp_path_factory, tokenizer):
    """(name, model folder) per architecture."""
    name = request.param
    return name, save_model(name, tmp_path_factory.mktemp(f"tiny-{name}"), tokenizer)


@pytest.fixture(scope="module")
def arch_lm(arch):
    name, folder = arch
    return name, load_base_model(str(folder), device="cpu")


def hf_greedy(model, pad_id: int, eos_id: int, rows: list[list[int]], max_new: int) -> list[list[int]]:
    """transformers' own greedy on a left-padded batch; each row's new tokens up to its EOS."""
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
    new = out[:, width:].tolist()
    return [r[: r.index(eos_id) + 1] if eos_id in r else r for r in new]


# ---- greedy parity -----------------------------------------------------------------------------


def test_greedy_matches_transformers_generate(arch_lm, monkeypatch):
    """Batched, left-padded rows sharing a prompt prefix (prefilled once where the cache allows):
    the same tokens as transformers' generate() on that batch, on each prompt alone, and in
    batches of 2 rows."""
    name, lm = arch_lm
    tok = lm.tokenizer
    requests = build_requests(tok, PROMPTS, make_strategy("greedy"))
    assert min(len(r.input_ids) for r in requests) > WINDOW
    prefills = []
    real_prefill = prefix_cache.SharedPrefix._prefill
    monkeypatch.setattr(prefix_cache.SharedPrefix, "_prefill", lambda s, e: prefills.append(1) or real_prefill(s, e))
    engine = GenerationEngine(lm)
    together = [g.token_ids for g in engine.generate(requests, max_new_tokens=MAX_NEW, batch_size=len(requests))]
    assert engine.can_join is JOINS[name]
    assert len(prefills) == (1 if JOINS[name] else 0)  # the shared prefix prefilled once, or not at all

    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].input_ids))  # the engine's batch order
    rows = [requests[i].input_ids for i in order]
    batch = hf_greedy(lm.model, tok.pad_token_id, tok.eos_token_id, rows, MAX_NEW)
    assert [together[i] for i in order] == batch
    alone = [hf_greedy(lm.model, tok.pad_token_id, tok.eos_token_id, [r.input_ids], MAX_NEW)[0] for r in requests]
    assert together == alone
    assert len(set(map(tuple, together))) == len(PROMPTS)  # not one degenerate continuation
    two_rows = [g.token_ids for g in engine.generate(requests, max_new_tokens=MAX_NEW, batch_size=2)]
    assert two_rows == together
    if name in SLIDING:
        # the window is shorter than every sequence: a model that ignored it would decode other tokens
        from transformers import AutoModelForCausalLM

        wide = AutoModelForCausalLM.from_pretrained(lm.name, sliding_window=4096).eval()
        assert [hf_greedy(wide, tok.pad_token_id, tok.eos_token_id, [r], MAX_NEW)[0] for r in rows] != batch


def test_sampled_and_autodeco_rows_split_leave_join_and_match_alone(arch_lm, monkeypatch):
    """Sampled and autodeco requests share rows, split when their tokens diverge, leave at a
    (frequent, fake) EOS and, where the cache allows, waiting ones join the running batch; each
    request draws the same tokens as when it runs alone."""
    name, lm = arch_lm
    joins = []
    real_join = generation._DecodeState._join
    monkeypatch.setattr(generation._DecodeState, "_join", lambda s, *a: joins.append(1) or real_join(s, *a))
    engine = GenerationEngine(lm, fresh_heads(HIDDEN, seed=0))
    requests = []
    for strategy, n in ((make_strategy("static", temperature=1.0, top_p=0.9), 2), (make_strategy("autodeco"), 1)):
        requests += build_requests(lm.tokenizer, PROMPTS, strategy, n=n, seed=7)
    first = engine.generate(requests, max_new_tokens=MAX_NEW, batch_size=len(requests))
    frequent = Counter(t for g in first for t in g.token_ids[2:]).most_common(1)[0][0]
    config = lm.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [lm.tokenizer.eos_token_id, frequent]
    try:
        together = engine.generate(requests, max_new_tokens=MAX_NEW, batch_size=5, trace=True)
        alone = [engine.generate([r], max_new_tokens=MAX_NEW, trace=True)[0] for r in requests]
    finally:
        config.eos_token_id = saved
        engine.close()
    assert any(g.finish_reason == "stop" for g in together) and any(g.finish_reason == "length" for g in together)
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert bool(joins) is JOINS[name]


def test_autodeco_traces_read_the_state_training_reads(arch_lm):
    """Decoding with heads gives one trace entry per token; the first one's T̂/P̂ are the heads
    applied to the decoder's last hidden state (what training reads) and the prompt's logits."""
    name, lm = arch_lm
    heads = fresh_heads(HIDDEN, seed=1)
    engine = GenerationEngine(lm, heads)
    requests = build_requests(lm.tokenizer, PROMPTS[:2], make_strategy("autodeco"), n=2, seed=3)
    generations = engine.generate(requests, max_new_tokens=MAX_NEW, batch_size=4, trace=True)
    engine.close()
    for g in generations:
        assert len(g.trace) == len(g.token_ids) > 0
        assert all(0 < t.temperature and 0 < t.top_p <= 1 and t.nucleus_size >= 1 for t in g.trace)
    ids = torch.tensor([requests[0].input_ids])
    with torch.inference_mode():
        hidden = lm.model.get_decoder()(input_ids=ids).last_hidden_state[:, -1]
        logits = lm.model(input_ids=ids).logits[:, -1].float()
        temperature, top_p = heads(hidden.float(), logits)
    first = generations[0].trace[0]
    assert first.temperature == pytest.approx(float(temperature), abs=1e-4)
    assert first.top_p == pytest.approx(float(top_p), abs=1e-4)


# ---- training and the commands -----------------------------------------------------------------

TRAIN_ROWS = [
    {"prompt": "What is 2+2?", "completion": "The answer is 4."},
    {"prompt": [{"role": "user", "content": "Tell me a joke."}], "completion": "A cat and a mouse walk into a bar."},
    {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
    {"prompt": "The quick brown fox", "completion": " jumps over the lazy dog."},
]


def test_train_heads_then_eval_grid_search_and_generate_through_the_cli(arch, cli, tmp_path):
    name, folder = arch
    data = write_jsonl(tmp_path / "train.jsonl", TRAIN_ROWS)
    heads = tmp_path / "heads"
    train = ["epochs=12", "micro_batch_size=4", "gradient_accumulation=1", "learning_rate=3e-3", "head_width=32"]
    train += ["schedule=constant", "warmup_ratio=0.0", "easy_drop_probability=0.0"]
    code, _, err = cli("train-heads", "-m", folder, "--data", data, "--output-dir", heads, *train)
    assert code == 0, err
    losses = [json.loads(line)["loss"] for line in (heads / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0], losses  # the same 4 examples every step

    common = ["-b", "arith-add", "--limit", "2", "-k", "1", "-m", folder, "--max-new-tokens", "6"]
    code, _, err = cli("eval", *common, "-d", "autodeco", "--heads", heads, "-o", tmp_path / "eval")
    assert code == 0, err
    result = json.loads((tmp_path / "eval" / "autodeco" / "results.json").read_text())["results"]["arith-add"]
    assert result["n_questions"] == 2 and 0 < result["mean_temperature"] and 0 < result["mean_top_p"] <= 1

    code, _, err = cli("grid-search", *common, "--cells", "0.7:0.9,1.0:1.0", "-o", tmp_path / "grid")
    assert code == 0, err
    cells = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert "static-T0.7-p0.9" in json.dumps(cells)

    trace = tmp_path / "trace.jsonl"
    code, _, err = cli("generate", "-m", folder, "--heads", heads, "--max-new-tokens", "6", "--trace-out", trace, "hi")
    assert code == 0, err
    steps = [json.loads(line) for line in trace.read_text().splitlines()]
    assert 1 <= len(steps) <= 6 and all({"temperature", "top_p"} <= set(step) for step in steps)


# ---- merge, split and the official merged layout -----------------------------------------------


def _decode(lm, heads):
    engine = GenerationEngine(lm, heads)
    requests = build_requests(lm.tokenizer, PROMPTS[:2], make_strategy("autodeco"), n=2, seed=4)
    requests += build_requests(lm.tokenizer, PROMPTS[:2], make_strategy("greedy"))
    out = engine.generate(requests, max_new_tokens=10, batch_size=3, trace=True)
    engine.close()
    return [(g.token_ids, [round(t.temperature, 5) for t in g.trace]) for g in out]


def test_merge_split_and_the_official_merged_layout(arch, tmp_path):
    """merge writes the base weights under the names its checkpoint uses (what the official
    tools and vLLM read: Qwen3-MoE's experts one tensor each); the merged folder, an official
    merged folder built from the checkpoint, and the split halves all decode the same."""
    from safetensors import safe_open

    name, folder = arch
    fresh_heads(HIDDEN, seed=2).save(tmp_path / "heads")
    base, heads = load_base_model(str(folder), device="cpu"), load_heads(tmp_path / "heads")
    expected = _decode(base, heads)

    merged = merge(str(folder), str(tmp_path / "heads"), tmp_path / "merged")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        checkpoint_keys = {"llm." + key for key in handle.keys()}
    with safe_open(str(merged / "model.safetensors"), framework="pt") as handle:
        merged_keys = {key for key in handle.keys() if key.startswith("llm.")}
    assert merged_keys == checkpoint_keys
    assert _decode(load_base_model(str(merged), device="cpu"), load_heads(merged)) == expected

    official = build_merged_folder(folder, tmp_path / "official", heads)
    assert _decode(load_base_model(str(official), device="cpu"), load_heads(official)) == expected

    base_out, heads_out = split(merged, tmp_path / "base", tmp_path / "split-heads")
    split_lm = load_base_model(str(base_out), device="cpu")
    original = base.model.state_dict()
    for key, value in split_lm.model.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert _decode(split_lm, load_heads(heads_out)) == expected


# ---- the bf16 CPU fast paths -------------------------------------------------------------------


def _teacher_forced_logits(lm, rows: list[list[int]], steps: int) -> torch.Tensor:
    """Logits of a left-padded prefill and `steps` decode steps on fixed tokens, through the
    engine's own forward and cache (so every model sees the same inputs)."""
    engine = GenerationEngine(lm)
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = engine.new_cache()
    generator = torch.Generator().manual_seed(0)
    out = []
    with torch.inference_mode():
        out.append(engine._forward(ids, mask, positions, cache)[0])
        for _ in range(steps):
            tokens = torch.randint(0, len(lm.tokenizer) - 8, (len(rows), 1), generator=generator)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            out.append(engine._forward(tokens, mask, positions, cache)[0])
    engine.close()
    return torch.stack(out)


def test_bf16_fast_paths_run_or_step_aside_and_match_transformers_bf16(arch, monkeypatch):
    """Which bf16 CPU path each architecture runs (the grouped decode attention and its C kernel,
    or transformers' eager attention; packed linears), and that it computes what transformers'
    own bf16 forward does, up to bf16 rounding: as close to it as bf16 is to fp32."""
    from transformers import AutoModelForCausalLM

    name, folder = arch
    kernel = cpu_kernels.load("decode_attention_bf16") is not None  # built and self-checked before counting
    fast = load_base_model(str(folder), device="cpu", dtype="bfloat16")
    calls = Counter()
    for module, function in (
        (attention_kernel, "decode_attention"),
        (lean_kernels, "decode_attention_rows"),  # the lean step's bf16 layers call the kernel directly
        (lean_kernels, "decode_layers"),  # or all of a step's layers in one C call, which calls it once per layer
        (cpu_inference, "_small_decode_attention"),
    ):
        real = getattr(module, function)
        monkeypatch.setattr(module, function, lambda *a, _real=real, _f=function: calls.update([_f]) or _real(*a))
    rows = [r.input_ids for r in build_requests(fast.tokenizer, PROMPTS[1:], make_strategy("greedy"))]
    ours = _teacher_forced_logits(fast, rows, 12)

    assert fast.model.config._attn_implementation == BF16_ATTENTION[name]
    if BF16_ATTENTION[name] == DECODE_ATTENTION:
        layers = fast.model.config.num_hidden_layers
        through_kernel = calls["decode_attention"] + calls["decode_attention_rows"] + layers * calls["decode_layers"]
        assert (through_kernel if kernel else calls["_small_decode_attention"]) == 12 * 2  # steps x layers
    else:
        assert not calls
    if onednn_packs_bf16():
        assert any(type(m) is PackedLinear for m in fast.model.modules())

    plain = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).eval()
    reference = _teacher_forced_logits(LoadedModel(plain, fast.tokenizer, "bf16", torch.device("cpu")), rows, 12)
    fp32 = _teacher_forced_logits(load_base_model(str(folder), device="cpu"), rows, 12)
    # a path that dropped the window or gemma3's query scale moved these logits by 0.9-2.5 on
    # average (bf16 itself: 0.01-0.12 from fp32); MoE routing may flip on a near tie, hence 3x
    bf16_noise = (reference - fp32).abs().mean()
    assert (ours - reference).abs().mean() <= 3 * bf16_noise
