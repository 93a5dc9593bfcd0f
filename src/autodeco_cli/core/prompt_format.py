"""How chat prompts are rendered for a run: an optional system prompt and chat-template switches.

Paper-scale evaluation applies the chat template with thinking enabled (Qwen3's
``{"enable_thinking": true}``, GPT-OSS's ``{"reasoning_effort": "high"}``). Both settings
change what the model sees, so they are recorded in every results JSON and are part of a run
folder's identity: a resumed run cannot mix samples made under another format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import UserError
from .json_files import check_depth, too_deep
from .schema import LIST, OBJECT, STRING, Field, Schema

# Chat messages as a prompt file or training data gives them: the chat template indexes both
# keys and concatenates the content, so anything but text fails inside the template.
CHAT_MESSAGE = Schema({"role": Field(STRING, nonempty=True), "content": Field(STRING)})
CHAT_MESSAGES = Field(LIST, nonempty=True, items=Field(OBJECT, fields=CHAT_MESSAGE))
CHAT_MESSAGES_HINT = "each message is {'role': text, 'content': text}"


@dataclass(frozen=True)
class PromptFormat:
    system_prompt: str | None = None
    template_kwargs: dict = field(default_factory=dict)

    def messages(self, prompt: str | list[dict]) -> list[dict]:
        """The chat messages for a prompt; a prompt that brings its own system message keeps it."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def record(self) -> dict:
        """The fields results JSONs and run folders record (None when unset, as old runs read)."""
        return {"system_prompt": self.system_prompt, "chat_template_kwargs": dict(self.template_kwargs) or None}


PLAIN = PromptFormat()


def parse_template_kwargs(text: str | None, flag: str = "--chat-template-kwargs") -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{flag}: not valid JSON ({exc.msg} at column {exc.colno})",
            """pass a JSON object, e.g. '{"enable_thinking": true}'""",
        ) from None
    except RecursionError:
        raise too_deep(flag) from None
    check_depth(value, flag)
    if not isinstance(value, dict):
        raise UserError(
            f"{flag}: expected a JSON object, got {type(value).__name__}", """pass e.g. '{"enable_thinking": true}'"""
        )
    return value


def prompt_format(system_prompt: str | None, template_kwargs: str | None) -> PromptFormat:
    return PromptFormat(system_prompt or None, parse_template_kwargs(template_kwargs))
