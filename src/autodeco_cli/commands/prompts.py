"""Reading prompts for `generate`: an argument, a text file (one per line), JSONL, or stdin."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.errors import UserError
from ..core.io_checks import read_text_file
from ..core.json_files import jsonl_records
from ..core.prompt_format import CHAT_MESSAGES, CHAT_MESSAGES_HINT
from ..core.schema import check


def _prompt_from_record(record, where: str):
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in ("messages", "prompt"):
            if isinstance(record.get(key), list):
                return check(record[key], CHAT_MESSAGES, f"{where}/{key}", CHAT_MESSAGES_HINT)
        if isinstance(record.get("prompt"), str):
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
        lines = enumerate(text.splitlines(), start=1)
        prompts = [
            _prompt_from_record(record, where)
            for where, record in jsonl_records(lines, name, "one JSON object per line")
        ]
    elif file is None:
        prompts = [text.strip()] if text.strip() else []
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{name}: no prompts found")
    return prompts
