"""Training examples for the heads: JSONL in, token ids with completion-only labels out.

Accepted lines:
- ``{"prompt": "<already templated text>", "completion": "..."}``
- ``{"prompt": [chat messages], "completion": "..."}``  (the model's chat template is applied)
- ``{"messages": [chat messages]}``                       (loss on assistant turns only)

EOS is appended to every completion. Unlike the official code, we never strip the first token
(it assumes a BOS that tokenizers such as SmolLM2's or Qwen's do not add).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import UserError
from ..core.json_files import read_jsonl_file
from ..core.prompt_format import CHAT_MESSAGE, CHAT_MESSAGES, CHAT_MESSAGES_HINT
from ..core.schema import LIST, OBJECT, STRING, Field, Schema, check

IGNORE_INDEX = -100
LINE_HINT = "one JSON object per line"
# A {prompt, completion} line, as steering reads it (parse_line checks the same, field by field).
PROMPT_COMPLETION = Schema(
    {"prompt": Field((STRING, LIST), items=Field(OBJECT, fields=CHAT_MESSAGE)), "completion": Field(STRING)}
)


@dataclass
class Example:
    index: int
    input_ids: list[int]
    labels: list[int]

    @property
    def num_loss_tokens(self) -> int:
        # labels are aligned with input_ids; position t predicts token t (shift happens at training)
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class DatasetReport:
    examples: int
    truncated: int
    dropped: int
    loss_tokens: int
    total_tokens: int


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token", "set tokenizer.eos_token in the model folder")
    return tokenizer.eos_token_id


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def encode_prompt_completion(tokenizer, prompt, completion: str) -> tuple[list[int], list[int]]:
    if isinstance(prompt, list):
        prompt_ids = _tokens(tokenizer, _render(tokenizer, prompt, add_generation_prompt=True))
    else:
        prompt_ids = _tokens(tokenizer, prompt)
        bos = tokenizer.bos_token_id
        # A plain string is "already templated", but the tokenizer's BOS is part of that template
        # for models that use one; add it only if the tokenizer itself would.
        if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not prompt_ids or prompt_ids[0] != bos):
            prompt_ids = [bos] + prompt_ids
    completion_ids = _tokens(tokenizer, completion) + [_eos(tokenizer)]
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def encode_messages(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Render turn by turn; the tokens each assistant turn adds are the loss tokens."""
    input_ids: list[int] = []
    labels: list[int] = []
    for end in range(1, len(messages) + 1):
        rendered = _tokens(tokenizer, _render(tokenizer, messages[:end], add_generation_prompt=False))
        if rendered[: len(input_ids)] != input_ids:
            raise ValueError("the chat template does not render conversations prefix by prefix")
        added = rendered[len(input_ids) :]
        if messages[end - 1].get("role") == "assistant":
            # the assistant header ("<|im_start|>assistant\n") is prompt, not completion
            header = len(_tokens(tokenizer, _render(tokenizer, messages[: end - 1], add_generation_prompt=True))) - len(
                input_ids
            )
            header = max(0, min(header, len(added)))
            turn = added[header:]
            # the template's text after the turn's EOS (e.g. "\n") never occurs in generation
            eos = tokenizer.eos_token_id
            end = turn.index(eos) + 1 if eos in turn else len(turn)
            labels += [IGNORE_INDEX] * header + turn[:end] + [IGNORE_INDEX] * (len(turn) - end)
        else:
            labels += [IGNORE_INDEX] * len(added)
        input_ids += added
    return input_ids, labels


def _check_messages(value, where: str, key: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise UserError(f"{where}: messages must be a list of {{'role', 'content'}} objects")
    return check(value, CHAT_MESSAGES, f"{where}/{key}", CHAT_MESSAGES_HINT)


def training_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """("FILE:LINE", record) for each line of a training JSONL, parsed depth-safe."""
    return read_jsonl_file(path, "training data", LINE_HINT)


def check_prompt_completion(record: Any, where: str) -> dict:
    """A {prompt, completion} record whose prompt is text or chat messages and whose completion is text."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return check(record, PROMPT_COMPLETION, where, LINE_HINT)


def parse_line(tokenizer, record, where: str) -> tuple[list[int], list[int]]:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = _check_messages(record["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: 'messages' has no assistant turn to learn from")
        try:
            return encode_messages(tokenizer, messages)
        except ValueError as exc:
            raise UserError(f"{where}: {exc}", "use {'prompt', 'completion'} lines instead") from None
    if "prompt" not in record or "completion" not in record:
        raise UserError(
            f"{where}: needs 'prompt' and 'completion' (or 'messages')", f"found keys: {', '.join(record) or 'none'}"
        )
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list):
        _check_messages(prompt, where, "prompt")
    elif not isinstance(prompt, str):
        raise UserError(f"{where}: 'prompt' must be a string or a list of chat messages")
    if not isinstance(completion, str) or not completion:
        raise UserError(f"{where}: 'completion' must be a non-empty string")
    return encode_prompt_completion(tokenizer, prompt, completion)


def steer_records(path: str | Path, limit: int | None = None) -> list[dict]:
    """The {prompt, completion} records `train-heads --steer` trains on (the first `limit`), each
    checked; torch-free, so the command refuses a bad file before the model loads."""
    records = [
        check_prompt_completion(record, where)
        for where, record in training_records(path)
        if not isinstance(record, dict) or ("prompt" in record and "completion" in record)
    ]
    if limit:
        records = records[:limit]
    if not records:
        raise UserError(
            f"{path}: no {{prompt, completion}} records to steer on",
            "use on-policy data from `autodeco make-data`",
        )
    return records


def check_data_file(path: str | Path) -> Path:
    """The training JSONL's path, refused when it does not exist (commands check it before the model loads)."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"training data not found: {path}",
            "build it with `autodeco make-data` or pass a JSONL of {prompt, completion}",
        )
    return path


def load_examples(
    path: str | Path, tokenizer, *, max_length: int = 2048, overlong: str = "truncate", limit: int | None = None
) -> tuple[list[Example], DatasetReport]:
    """Read and tokenize a training JSONL. `overlong` is "truncate" or "drop"."""
    if overlong not in ("truncate", "drop"):
        raise UserError(f"overlong={overlong!r} is not a policy", "use truncate or drop")
    path = check_data_file(path)
    examples: list[Example] = []
    truncated = dropped = 0
    # decoded line by line: a binary file fails naming its line, and a large file stays on disk
    for where, record in training_records(path):
        input_ids, labels = parse_line(tokenizer, record, where)
        if len(input_ids) > max_length:
            if overlong == "drop":
                dropped += 1
                continue
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            truncated += 1
        example = Example(len(examples), input_ids, labels)
        if example.num_loss_tokens == 0:
            dropped += 1  # the prompt alone filled the length budget
            continue
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise UserError(f"{path}: no usable training examples", "check the file has completions within max_length")
    report = DatasetReport(
        examples=len(examples),
        truncated=truncated,
        dropped=dropped,
        loss_tokens=sum(e.num_loss_tokens for e in examples),
        total_tokens=sum(len(e.input_ids) for e in examples),
    )
    return examples, report
