"""What each part of gpu_check.py should cost on one H100, from bytes moved and FLOPs.

gpu_check.py prints these before each part and its --budget-s guard skips a part whose estimate
no longer fits. They are a plan, not a measurement: the hardware numbers are datasheet values
derated by a guess, and the host-side costs (Python, kernel launches, our sampler's CPU work)
are guesses too. No GPU run has calibrated them yet; compare them with a run's wall times.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    @property
    def params(self) -> int:
        """Llama layout, untied embeddings: q/o, k/v, gate/up/down, two norms a layer."""
        per_layer = (
            2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_width + 3 * self.hidden * self.intermediate
        )
        return self.layers * (per_layer + 2 * self.hidden) + 2 * self.vocab * self.hidden + self.hidden


# Llama-3-8B's shape; the check builds it with random weights, so nothing is downloaded.
LLAMA_8B = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256)
# Small enough for the tests on 2 CPU cores; its vocabulary is larger than the check's tokenizer
# (320 ids), as the 8B model's is, so sampled ids the tokenizer does not know are exercised too.
TINY = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024)


@dataclass(frozen=True)
class Hardware:
    name: str = "H100 SXM"
    bandwidth: float = 3.0e12  # bytes/s from HBM: 3.35 TB/s on the datasheet, ~90% reachable
    flops: float = 400e12  # bf16 FLOP/s of large matmuls (989 dense peak; eager models reach far less)
    # An eager transformers decoder layer launches ~15-20 kernels, each paying Python dispatch:
    # at batch 1 an 8B decode step is bound by that, not by the 16 GB of weights (5.4 ms).
    host_per_layer: float = 0.5e-3
    host_per_step: float = 2e-3  # our decode loop's bookkeeping (rows, KV selection, stop checks)
    # our sampler copies each row's probabilities (128k floats) to the CPU and walks them there
    host_per_row: float = 0.25e-3
    host_per_micro_step: float = 20e-3  # the training loss's many small ops, heads, optimizer
    sort_keys_per_s: float = 3e9  # torch.sort over the vocabulary in the soft top-p loss
    vocab_passes: int = 30  # full-vocabulary fp32 tensors the loss reads or writes per token
    disk: float = 1e9  # bytes/s writing the hidden-state cache
    startup: float = 15.0  # s: CUDA context, cuBLAS handles, allocating and filling the weights


H100 = Hardware()


def decode_step_s(shape: ModelShape, rows: int, context: int, hw: Hardware = H100) -> float:
    """One decode step of `rows` rows at `context` tokens: the weights and the KV cache are read
    once; the host launches every layer's kernels meanwhile, then samples each row."""
    weight_bytes = 2 * shape.params
    kv_bytes = rows * context * shape.layers * 2 * shape.kv_width * 2
    gpu = (weight_bytes + kv_bytes) / hw.bandwidth + 2 * shape.params * rows / hw.flops
    return max(gpu, shape.layers * hw.host_per_layer) + hw.host_per_step + rows * hw.host_per_row


def prefill_s(shape: ModelShape, tokens: int, hw: Hardware = H100) -> float:
    return 2 * shape.params * tokens / hw.flops + shape.layers * hw.host_per_layer


def generate_s(
    shape: ModelShape, rows: int, prompt: int, new: int, runs: int, warmup_tokens: int, hw: Hardware = H100
) -> float:
    """`runs` timed generations of `new` tokens per row, plus one short warm-up per strategy."""
    step = decode_step_s(shape, rows, prompt + new // 2, hw)
    one_run = prefill_s(shape, rows * prompt, hw) + new * step
    warmups = 2 * (prefill_s(shape, rows * prompt, hw) + warmup_tokens * step)
    return runs * one_run + warmups


def _loss_s(shape: ModelShape, loss_tokens: int, micro_steps: int, hw: Hardware) -> float:
    """Logits, the heads and the soft top-p loss (one vocabulary sort per token), per run."""
    matmul = 3 * 2 * shape.hidden * shape.vocab * loss_tokens / hw.flops
    traffic = hw.vocab_passes * shape.vocab * 4 * loss_tokens / hw.bandwidth
    sort = shape.vocab * loss_tokens / hw.sort_keys_per_s
    return matmul + traffic + sort + micro_steps * hw.host_per_micro_step


def train_s(
    shape: ModelShape,
    steps: int,
    micro_steps_per_step: int,
    examples_per_step: int,
    tokens_per_example: float,
    loss_tokens_per_example: float,
    dataset_examples: int,
    cache: bool,
    hw: Hardware = H100,
) -> float:
    """`steps` optimizer steps. Without the cache every step runs the frozen base forward; with it
    the base runs once over the data set and the hidden states are written to disk first."""
    seen = steps * examples_per_step
    micro_steps = steps * micro_steps_per_step
    loss = _loss_s(shape, int(seen * loss_tokens_per_example), micro_steps, hw)
    base_examples = dataset_examples if cache else seen
    base = 2 * shape.params * base_examples * tokens_per_example / hw.flops
    write = dataset_examples * loss_tokens_per_example * shape.hidden * 4 / hw.disk if cache else 0.0
    return base + loss + write


def eval_s(shape: ModelShape, requests: int, rows: int, prompt: int, new: int, hw: Hardware = H100) -> float:
    """Continuous batching keeps about `rows` rows busy: ceil(requests / rows) waves of `new` steps."""
    waves = -(-requests // rows)
    step = decode_step_s(shape, min(rows, requests), prompt + new // 2, hw)
    return waves * (new * step + prefill_s(shape, min(rows, requests) * prompt, hw))
