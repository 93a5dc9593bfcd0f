"""Shared fixtures: a tiny random Llama + a tiny offline byte-level BPE tokenizer.

Everything is built from code (no network, no downloads) in a session-scoped temp folder, so the
unit tests run in seconds. Nothing here is autouse: other test files opt in by naming a fixture.

Also shared: `FakeTask` and the `fake_registry` fixture (a benchmark without data files), the `cli`
fixture (the console entry point in-process), and `Killed`/`kill_after` (a run that dies after its
N-th batch, for resume tests).
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Tests compare tokens with transformers and with recorded values, which only fp32 reproduces. No
# --dtype means "auto" (bf16 on CPUs with native bf16), so every test resolves it as on a CPU
# without: fp32 on any machine. Subprocesses (--dp replicas, the CLI) inherit it. Tests of the
# default itself monkeypatch cpu_has_native_bf16.
os.environ["AUTODECO_CPU_BF16"] = "0"

TINY_HIDDEN = 32
TINY_VOCAB = 320  # byte alphabet (256) + a few merges + the special tokens

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 27 + 82? The answer is 109.",
    "Tell me a joke about a cat and a mouse.",
    "Once upon a time there was a small model that liked to count: one two three four five.",
    "def add(a, b):\n    return a + b\n",
    "Temperature and top-p are decoding parameters of a language model.",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (any text encodes) with a chat template and bos/eos/pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # A larger init than the default 0.02 gives peaked, input-dependent next-token distributions,
    # so greedy paths are not flat ties and different prompts lead to different continuations.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return model.eval()


def save_tiny_model(folder: Path, seed: int = 0, generation_overrides: dict | None = None) -> Path:
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed)
    if generation_overrides:
        for key, value in generation_overrides.items():
            setattr(model.generation_config, key, value)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def torch_single_thread():
    """One intra-op thread for the duration of a module, restored afterwards.

    Tiny models are dominated by per-op overhead; on a shared 2-core box extra threads only spin
    (measured: 16 tokens in 0.5 s with 2 threads vs 0.03 s with 1). Opt in with
    ``pytestmark = pytest.mark.usefixtures("torch_single_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def on_one_thread_and_two(compute, flush: bool):
    """`compute()` on one torch thread, then on two whose pool workers started before flushing turned on (as the
    engine's do: it turns flushing on after torch made them), each time under `set_flush_denormal(flush)`; the
    caller's threads and flush mode are restored. Returns the two results."""
    threads, was_flushing = torch.get_num_threads(), float(torch.tensor([1e-40]) * 1.0) == 0.0
    try:
        torch.set_num_threads(1)
        torch.set_flush_denormal(flush)
        one = compute()
        torch.set_flush_denormal(False)
        torch.set_num_threads(2)
        torch.ones(1 << 20).sum()  # the workers exist now, not flushing
        torch.set_flush_denormal(flush)
        two = compute()
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(was_flushing)
    return one, two


@pytest.fixture
def without_amx_kernel(monkeypatch):
    """Pack bf16 linears as on a CPU without AMX (oneDNN's copy, the gemv kernel for few rows),
    so tests of those paths mean the same on every CPU."""
    from autodeco_cli.core import cpu_kernels

    real = cpu_kernels.load
    monkeypatch.setattr(cpu_kernels, "load", lambda name: None if name == "amx_matmul_bf16" else real(name))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder with a tiny random LlamaForCausalLM (safetensors) and its tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """The tiny model loaded through the engine's own loader (LoadedModel). Treat as read-only."""
    from autodeco_cli.engine.models import load_base_model

    return load_base_model(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_heads_dir(tmp_path_factory) -> Path:
    """Fresh (untrained) heads for the tiny model, saved in our layout."""
    from autodeco_cli.core.heads import fresh_heads

    folder = tmp_path_factory.mktemp("tiny-heads")
    fresh_heads(TINY_HIDDEN, base_model="tiny-llama", seed=0).save(folder)
    return folder


@pytest.fixture(scope="session")
def wrong_heads_dir(tmp_path_factory) -> Path:
    """Heads for a different hidden size (48) than the tiny model (32)."""
    from autodeco_cli.core.heads import fresh_heads

    folder = tmp_path_factory.mktemp("wrong-heads")
    fresh_heads(TINY_HIDDEN + 16, base_model="other", seed=0).save(folder)
    return folder


VLLM_TINY_HIDDEN = 128  # 2 heads of 64: vLLM's CPU attention has no kernel for the tiny model's head size 8


def save_vllm_tiny_base(folder: Path):
    """A tiny random Llama that vLLM can run, saved with the tiny tokenizer; returns the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=VLLM_TINY_HIDDEN,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).eval()
    base.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return base


def build_merged_folder(base_dir: Path, target: Path, heads, sharded: bool = False) -> Path:
    """An official-style merged AutoDeco checkpoint built from a saved base model folder: base
    weights under ``llm.``, the heads' tensors, and an autodeco config with base_model_type."""
    from safetensors.torch import load_file, save_file

    base = load_file(str(base_dir / "model.safetensors"))
    state = {"llm." + k: v.contiguous() for k, v in base.items()}
    state.update({k: v.detach().contiguous() for k, v in heads.state_dict().items()})
    target.mkdir(parents=True, exist_ok=True)
    if sharded:
        keys = sorted(state)
        save_file({k: state[k] for k in keys[: len(keys) // 2]}, str(target / "model-00001-of-00002.safetensors"))
        save_file({k: state[k] for k in keys[len(keys) // 2 :]}, str(target / "model-00002-of-00002.safetensors"))
    else:
        save_file(state, str(target / "model.safetensors"))
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg.update(
        model_type="autodeco",
        base_model_type=cfg["model_type"],
        base_model_name_or_path=str(base_dir),
        architectures=["AutoDecoModelForCausalLM"],
        use_enhanced_features=True,
    )
    (target / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base_dir / name).is_file():
            (target / name).write_bytes((base_dir / name).read_bytes())
    return target


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- a benchmark without data files, and the registry that serves it ---------------------------


@dataclass(frozen=True)
class FakeTask:
    """Prompts of varied length (so batches pad); 'correct' is a coin flip on the generated text."""

    name: str = "fake"
    max_new_tokens: int = 5
    description: str = "fake task for tests"
    n_docs: int = 4

    def load_docs(self, split="test", limit=None, data_dir=None):
        from autodeco_cli.tasks.types import Doc

        docs = [Doc(f"fake/{i}", "count " * (1 + 2 * i) + "now", str(i % 3), {}) for i in range(self.n_docs)]
        return docs[:limit] if limit else docs

    def score(self, doc, text):
        from autodeco_cli.tasks.types import Score

        if not text:
            return Score(False, None, {"chars": 0.0})
        extracted = str(len(text) % 3)
        return Score(extracted == doc.gold, extracted, {"chars": float(len(text))})


@pytest.fixture()
def fake_registry(monkeypatch):
    """The task registry serving `fake` (4 docs) and `fake2` (3 docs) instead of evals/."""
    from autodeco_cli.tasks import registry

    tasks = {"fake": FakeTask(), "fake2": FakeTask(name="fake2", n_docs=3)}
    monkeypatch.setattr(registry, "get_task", lambda name: tasks[name])
    monkeypatch.setattr(registry, "expand", lambda names: [n.strip() for n in str(names).split(",")])
    return tasks


# ---- the CLI in-process ------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """Run `autodeco ARGS...` through the console entry point main(), in-process; returns
    (exit code, stdout, stderr). `stdin=` replaces standard input for that call."""
    from autodeco_cli.cli import main

    monkeypatch.setenv("AUTODECO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "300")  # wide enough that no one-line error wraps

    def run(*args, stdin: str | None = None):
        monkeypatch.setattr(sys, "argv", ["autodeco", *map(str, args)])
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


# ---- a run killed mid-way ----------------------------------------------------------------------


class Killed(Exception):
    """Stands for the process being killed (see kill_after)."""


def kill_after(engine, monkeypatch, batches: int) -> None:
    """Make engine.generate raise Killed right after its N-th batch (counted over all calls) has
    been handed to the caller's on_batch_done, i.e. after the caller wrote it."""
    original = engine.generate
    seen = {"batches": 0}

    def generate(requests, **kwargs):
        done = kwargs.pop("on_batch_done")

        def on_batch_done(batch):
            done(batch)
            seen["batches"] += 1
            if seen["batches"] >= batches:
                raise Killed()

        return original(requests, on_batch_done=on_batch_done, **kwargs)

    monkeypatch.setattr(engine, "generate", generate)


def interrupt_every_engine_after_first_batch(monkeypatch) -> None:
    """Ctrl-C right after the first batch a command's own engine hands to on_batch_done (the
    command builds its engine, so the class is patched, unlike kill_after's one engine)."""
    from autodeco_cli.engine.generation import GenerationEngine

    original = GenerationEngine.generate

    def interrupted(self, requests, **kwargs):
        done = kwargs["on_batch_done"]

        def then_stop(batch):
            done(batch)
            raise KeyboardInterrupt

        return original(self, requests, **{**kwargs, "on_batch_done": then_stop})

    monkeypatch.setattr(GenerationEngine, "generate", interrupted)
