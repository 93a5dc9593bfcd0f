"""With vLLM installed, `--engine vllm` and `serve` refuse bad option values and the model, heads
and adapter paths in the same one line as our engine does, before vLLM, torch or transformers
is imported (issue #23). test_lazy_imports.py covers the same argvs without vLLM; this runs them
where vLLM is there to import (`make test-vllm`), so a check that moved after the import would show.
"""

from __future__ import annotations

import importlib.util

import pytest

from test_lazy_imports import _first_heavy, _probe, vllm_engine_errors

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (make test-vllm)")


def test_vllm_option_errors_are_one_line_before_vllm_loads(tmp_path):
    errors = vllm_engine_errors(tmp_path, installed=True)
    runs = _probe(list(errors.values()), tmp_path)
    culprit = _first_heavy(runs)
    assert culprit is None, f"{culprit}: check the input before the engine opens"
    by_argv = {tuple(r["argv"]): r for r in runs}
    for needle, argv in errors.items():
        run = by_argv[tuple(argv)]
        assert run["code"] == 2 and needle in run["stderr"], (argv, run["code"], run["stderr"])
        assert run["stderr"].count("\n") == 1, run["stderr"]  # one line, no traceback
