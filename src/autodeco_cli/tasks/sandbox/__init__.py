"""Sandboxed execution of untrusted programs, and LiveCodeBench scoring on top of it.

The program under test is model output and is treated as hostile. Modules, one idea each:

* limits.py       -- `Limits`, the resource limits of one run, and applying them as rlimits;
* isolation.py    -- which isolation mode a run gets (AUTODECO_SANDBOX) and the fresh root's contents;
* stage.py        -- (runs in the child) enters the namespaces, builds the fresh root, drops privileges;
* harness.py      -- (runs in the child) the runner that starts the program and reports its output;
* process.py      -- spawning, pumping, reaping and killing the process tree of one run;
* livecodebench.py-- LiveCodeBench tests, and the verdict, decided in this process on plain data.

Public API: `run_sandboxed` (a program + stdin -> `SandboxResult`), `score_code` (LiveCodeBench
pass@1 on public tests), `sandbox_info` / `judge_isolation` (what isolation is in use, for reports).
"""

from __future__ import annotations

from typing import Any

from ..types import Doc, Score
from .isolation import ENV_VAR, GUARD_WARNING, Plan, SandboxUnavailable, choose_plan
from .limits import PROBE_LIMITS, Limits
from .livecodebench import extract_code, score_tests
from .process import SandboxResult, run_job

__all__ = [
    "ENV_VAR",
    "GUARD_WARNING",
    "Limits",
    "SandboxResult",
    "SandboxUnavailable",
    "extract_code",
    "judge_isolation",
    "run_sandboxed",
    "sandbox_info",
    "score_code",
]


def _probe(plan: Plan) -> str | None:
    """None when `plan` really runs a program here, else a one-line reason.

    The probe also checks the fresh root from the inside: this very file must not be visible.
    """
    import os

    me = os.path.realpath(__file__)
    code = f"import os\nprint('ok' if not os.path.exists({me!r}) else 'host files visible')"
    if not plan.fresh_root:
        code = "print('ok')"
    try:
        res = run_job(plan, {"kind": "script", "src": code}, b"", PROBE_LIMITS)
    except OSError as exc:  # e.g. the interpreter cannot be started at all
        return f"cannot start {plan.python}: {exc.strerror or exc}"
    if res.returncode == 0 and res.stdout.strip() == "ok":
        return None
    detail = res.stdout.strip() or res.stderr.strip() or f"exit status {res.returncode}"
    return detail.splitlines()[-1][:300]


def _plan(isolation: str) -> Plan:
    return choose_plan(isolation, _probe)


def sandbox_info(isolation: str = "auto") -> dict[str, Any]:
    """Which isolation `run_sandboxed` uses here (probes once per process and mode)."""
    return _plan(isolation).info()


def judge_isolation(isolation: str = "auto") -> str:
    """A short label of the isolation code is judged under, for results files and summaries."""
    return _plan(isolation).label


def run_sandboxed(
    code: str, stdin: str = "", *, limits: Limits | None = None, isolation: str = "auto", **limit_overrides: Any
) -> SandboxResult:
    """Run `code` as a Python program (``__main__``) with `stdin` under the chosen isolation.

    Limits come from `limits` and/or keyword overrides (``timeout_s``, ``cpu_s``, ``memory_mb``,
    ``max_procs``, ``file_size_mb``, ``max_output_mb``, ``work_mb``). `killed_reason` is one of None,
    "timeout" (wall clock), "cpu", "memory", "file_size", "disk_full" (the private /tmp),
    "output_limit", "signal:NAME" or "sandbox_error". `isolation` "auto" follows $AUTODECO_SANDBOX
    and otherwise the strongest mode for this uid; it raises SandboxUnavailable rather than weaken.
    """
    plan = _plan(isolation)
    job = {"kind": "script", "src": code}
    return run_job(plan, job, stdin.encode("utf-8", errors="surrogatepass"), Limits.of(limits, **limit_overrides))


def score_code(
    doc: Doc, completion_text: str, *, limits: Limits | None = None, isolation: str = "auto", **limit_overrides: Any
) -> Score:
    """LiveCodeBench pass@1 of `completion_text` on the doc's public tests (see livecodebench.py).

    The sandbox is probed even when the text holds no code, so a machine that cannot judge fails
    before any generation is spent on it.
    """
    plan = _plan(isolation)
    lim = Limits.of(limits, **limit_overrides)

    def run(job: dict[str, Any], stdin: str) -> SandboxResult:
        return run_job(plan, job, stdin.encode("utf-8", errors="surrogatepass"), lim)

    return score_tests(doc, completion_text, run)
