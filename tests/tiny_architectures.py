"""Tiny random-weight models of the families the paper's heads are released for (llama, qwen2,
qwen3_moe, gpt_oss) and those users run (qwen3, mistral, gemma3 text), built from transformers
configs: 2 layers, hidden 64, the tokenizer of conftest.py. No downloads.

Each keeps what makes its family different: qwen2, mistral, gpt_oss and gemma3 have sliding-window
layers with a window (`WINDOW`) far shorter than any prompt, so windowing changes every
continuation; gpt_oss and gemma3 alternate sliding and full layers, gpt_oss has attention sinks,
qwen3_moe and gpt_oss route tokens to experts, qwen3 and gemma3 normalise queries and keys, and
gemma3 scales its queries by its own scalar (not 1/sqrt(head_dim)) and ties its embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch

WINDOW = 8  # tokens a sliding layer sees; prompts are ~50 tokens, generations add 16 more
HIDDEN = 64
HEAD_DIM = 32  # the C decode-attention kernel takes multiples of 32
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gpt_oss", "gemma3")
SLIDING = {"mistral", "qwen2", "gpt_oss", "gemma3"}


def build_config(name: str, tokenizer, **overrides):
    import transformers as tf

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    alternating = dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"])
    experts = dict(num_experts_per_tok=2)
    if name == "llama":
        config = tf.LlamaConfig(**common)
    elif name == "mistral":
        config = tf.MistralConfig(**common, sliding_window=WINDOW)  # every layer slides
    elif name == "qwen2":  # layers from max_window_layers on slide
        config = tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    elif name == "qwen3":
        config = tf.Qwen3Config(**common)
    elif name == "qwen3_moe":
        config = tf.Qwen3MoeConfig(**common, **experts, num_experts=4, moe_intermediate_size=32)
    elif name == "gpt_oss":
        # its YaRN factor of 32 over 4096 original positions implies this many
        common.update(intermediate_size=32, max_position_embeddings=131072)
        config = tf.GptOssConfig(**common, **experts, **alternating, num_local_experts=4)
    elif name == "gemma3":
        common.update(tie_word_embeddings=True)
        config = tf.Gemma3TextConfig(**common, **alternating, query_pre_attn_scalar=64)
    else:
        raise KeyError(name)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def build_model(name: str, tokenizer, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_config(name, tokenizer, **overrides))
    # as conftest.build_tiny_model: a larger init gives peaked, input-dependent distributions;
    # experts (3-d) and gpt_oss's sinks too, so routing and sinks change the outputs
    with torch.no_grad():
        for key, param in model.named_parameters():
            if param.dim() >= 2 or key.endswith("sinks"):
                param.normal_(0.0, 0.3)
        if name == "gemma3":
            # gemma3 multiplies embeddings by sqrt(hidden) and normalises each block's output, so
            # the last token's own (tied) embedding dominated and greedy repeated one token: a
            # smaller embedding, larger block outputs and logits (its norms scale by 1 + weight)
            model.model.embed_tokens.weight.normal_(0.0, 0.3 / HIDDEN**0.5)
            for layer in model.model.layers:
                layer.post_attention_layernorm.weight.fill_(1.0)
                layer.post_feedforward_layernorm.weight.fill_(1.0)
            model.model.norm.weight.fill_(HIDDEN**0.5 - 1)
    return model.eval()


def save_model(name: str, folder: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    build_model(name, tokenizer, seed, **overrides).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder
