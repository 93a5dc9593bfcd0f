"""This CPU's limits for bench_engine.py: read bandwidth, matmul peaks, the model's bytes and FLOPs per token."""

from __future__ import annotations

import time


def probe_limits(threads: int) -> dict:
    """Read bandwidth (sum over 512 MB) and bf16 / fp32 matmul peak (2048^3), this process."""
    import torch

    torch.set_num_threads(threads)

    def best(fn, seconds=1.0):
        fn()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    big = torch.ones(128 * 1024 * 1024)  # 512 MB fp32, far past the caches
    bandwidth = big.numel() * 4 / best(lambda: big.sum()) / 1e9
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    fp32 = 2 * 2048**3 / best(lambda: a @ b) / 1e9
    ab, bb = a.bfloat16(), b.bfloat16()
    bf16 = 2 * 2048**3 / best(lambda: ab @ bb) / 1e9
    return {"read_GBps": bandwidth, "fp32_GFLOPs": fp32, "bf16_GFLOPs": bf16}


def model_costs(model: str) -> dict:
    """Parameters (and so weight bytes read and FLOPs) per decoded token of the default model."""
    from autodeco_cli.engine.models import load_base_model

    lm = load_base_model(model, device="cpu", dtype="float32")
    config = lm.model.config
    body = sum(p.numel() for n, p in lm.model.named_parameters() if "embed_tokens" not in n)
    head = config.vocab_size * config.hidden_size  # tied: the LM head is the embedding matrix
    return {
        "body_params": body,
        "head_params": head,
        "layers": config.num_hidden_layers,
        "kv_dim": config.num_key_value_heads * (config.hidden_size // config.num_attention_heads),
    }


# ---- accuracy: fp32 vs auto ------------------------------------------------------------------------
