"""The offline stand-ins gpu_check.py runs on: a random-weight Llama built on the device, a small
byte-level BPE tokenizer trained here, random prompts and synthetic training data.

Nothing is downloaded and nothing is read from disk, so the check runs on a bare GPU machine.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from autodeco_cli.engine.models import LoadedModel, prepare_tokenizer
from gpu_estimates import ModelShape

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "the answer is sum of plus and then we carry one ten add digits units tens so result number "
    "first second check write step next value equals total"
).split()
# Weights at transformers' default init scale (std 0.02), except the LM head: scaled so the
# logits have std ~4, which makes next-token distributions peaked like a trained model's (a
# nucleus of a few tokens to a few hundred, not ~half of 128k), and the sampler's cost realistic.
INIT_STD = 0.02
LOGIT_STD = 4.0


def build_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer (any text encodes) with a chat template and bos/eos/pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(WORDS), "What is 27 + 82? Reply with just the number.", "0123456789 + = ?"]
    raw.train_from_iterator(corpus * 8, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|pad|>", unk_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    prepare_tokenizer(tokenizer)
    return tokenizer


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def random_llama(shape: ModelShape, tokenizer, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LoadedModel:
    """A Llama of `shape` allocated on `device` in `dtype` without transformers' init (for 8B that is
    minutes on the CPU), then filled with random values there; ready as load_base_model leaves one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with _no_init_weights(), torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    # skipped init leaves whatever the allocator held (NaNs included): every parameter is written
    generator = torch.Generator(device=device).manual_seed(seed)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.fill_(1.0)  # RMSNorm weights
            else:
                std = LOGIT_STD / math.sqrt(shape.hidden) if param is head else INIT_STD
                param.normal_(0.0, std, generator=generator)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"random-llama-{shape.params / 1e9:.2f}B", device=device)


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Token ids drawn over the model's whole vocabulary: the prompts need no tokenizer."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count, length), generator=generator).tolist()


def write_training_data(path: Path, examples: int, completion_words: int, seed: int) -> Path:
    """{prompt: [chat messages], completion} lines: arithmetic questions, word-salad worked answers."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(examples):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            prompt = [{"role": "user", "content": f"What is {a} + {b}? Reply with just the number."}]
            words = " ".join(rng.choice(WORDS) for _ in range(completion_words))
            handle.write(json.dumps({"prompt": prompt, "completion": f"{words} {a + b}"}) + "\n")
    return path
