"""Reading prompts for `generate`: an argument, a text file (one per line), JSONL, or stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..core.errors import UserError
from ..core.io_checks import read_text_file


def _prompt_from_record(record, where: str):
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        if isinstance(record.get("messages"), list):
            return record["messages"]
        if isinstance(record.get("prompt"), (str, list)):
            return record["prompt"]
    raise UserError(f"{where}: expected a JSON string or an object with 'prompt' or 'messages'")


def read_prompts(prompt: str | None, file: Path | None) -> list:
    """Prompts as strings (user messages / raw text) or chat message lists."""
    if prompt is not None and file is not None:
        raise UserError("give a prompt argument or --file, not both")
    if prompt is not None and prompt != "-":
        return [prompt]
    if file is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError("no prompt given", "pass a prompt, --file PROMPTS.jsonl, or pipe text on stdin")
        text, name = sys.stdin.read(), "<stdin>"
    else:
        text, name = read_text_file(file, "prompt file"), str(file)
    if file is not None and file.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{name}:{number}: invalid JSON ({exc.msg})", "one JSON object per line") from None
            prompts.append(_prompt_from_record(record, f"{name}:{number}"))
    elif file is None:
        prompts = [text.strip()] if text.strip() else []
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{name}: no prompts found")
    return prompts
