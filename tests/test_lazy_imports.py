"""`autodeco --help`, every command's --help and the user errors a typo makes (grid-search's
options and inputs, the EDT options among them) answer in one line without importing torch,
transformers or vLLM (issue #23: a second or more of start-up each, for nothing).

One fresh interpreter (this one has torch loaded by conftest) runs the real entry point
(`cli.main`) for each argv in turn and reports which heavy modules are loaded after it. Runs are
sequential, so the first one that reports a heavy module is the one that imported it. Commands
are found from the registered Typer app, so a new command is covered without editing this file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "vllm")

PROBE = r"""
import contextlib, io, json, sys

import typer

HEAVY = tuple(sys.argv[1].split(","))
ERROR_ARGVS = json.loads(sys.argv[2])


def heavy():
    return [name for name in HEAVY if name in sys.modules]


from autodeco_cli import cli  # noqa: E402  (after `heavy` exists: the import itself is checked)

runs = [{"argv": ["(import autodeco_cli.cli)"], "code": 0, "stderr": "", "heavy": heavy()}]


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["autodeco", *argv]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
    runs.append({"argv": argv, "code": code, "stderr": err.getvalue(), "heavy": heavy()})


def command_paths(command, path=()):
    yield list(path)
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from command_paths(sub, (*path, name))


for path in command_paths(typer.main.get_command(cli.app)):
    run([*path, "--help"])
for argv in ERROR_ARGVS:
    run(argv)
print("PROBE " + json.dumps(runs))
"""


def _probe(error_argvs: list[list[str]], cwd: Path) -> list[dict]:
    """Runs in this interpreter's environment: test_vllm_option_errors.py calls it under .venv-vllm."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("AUTODECO_DOWNLOAD", None)  # a missing data file is an error here, never a download
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), json.dumps(error_argvs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE ") :])


def _first_heavy(runs: list[dict]) -> str | None:
    for run in runs:
        if run["heavy"]:
            return f"`autodeco {' '.join(run['argv'])}` imported {', '.join(run['heavy'])}"
    return None


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lazy")


@pytest.fixture(scope="module")
def probe(work) -> tuple[list[dict], dict[str, str]]:
    missing = str(work / "missing.jsonl")
    # each a user error met before any model loads, with a piece of its one-line message
    errors = {
        "prompt file not found": ["generate", "--file", missing],
        "is not a strategy": ["generate", "--decoding", "no-such-decoding", "hi"],
        "Unknown task 'no-such-task'": ["eval", "-b", "no-such-task"],
        "training data not found": ["train-heads", "--data", missing, "--output-dir", str(work / "heads")],
    }
    errors.update(_grid_search_errors(work))
    errors.update(_edt_errors())
    errors.update(_other_input_errors(work))
    errors.update(_engine_option_errors(work))
    errors.update(_decoding_flag_errors())
    errors.update(_recipe_errors(work))
    errors.update(_train_heads_errors(work))
    errors.update(vllm_engine_errors(work, installed=importlib.util.find_spec("vllm") is not None))
    if importlib.util.find_spec("vllm") is None:  # with vLLM installed, serve goes on to stage the model
        errors["needs vLLM, which is not installed"] = ["serve", "--dry-run"]
    return _probe(list(errors.values()), work), errors


def _grid_search_errors(work: Path) -> dict[str, list[str]]:
    """grid-search's own option and input errors: every one is found before the model loads."""
    (work / "a-file").write_text("")
    (work / "no-data").mkdir()
    grid = ["grid-search", "-b", "arith-add", "-o", str(work / "grid")]
    return {
        "--mode 'no-such-mode' is not a mode": [*grid, "--mode", "no-such-mode"],
        "--cells is for --mode cells": [*grid, "--cells", "1:1", "--mode", "full"],
        "--family 'no-such-family' is not a grid family": [*grid, "--family", "no-such-family"],
        "--mode expert is the static (T, p) recipe": [*grid, "--family", "min-p", "--mode", "expert"],
        "--edt-base is a setting of --family edt, not static": [*grid, "--edt-base", "0.5"],
        "--edt-base 2 is out of range": [*grid, "--family", "edt", "--edt-base", "2"],
        "--edt-thetas: 0 is out of range": [*grid, "--family", "edt", "--edt-thetas", "0"],
        "--temperatures: 'abc' is not a number": [*grid, "--temperatures", "abc"],
        "--top-ps: 2 is out of range": [*grid, "--top-ps", "2"],
        "--min-ps is the axis of --family min-p": [*grid, "--min-ps", "0.1"],
        "--cells: '1.0' is not T:P": [*grid, "--cells", "1.0"],
        "--seeds 'abc' is neither a count": [*grid, "--seeds", "abc"],
        "-k 0: need at least one sample": [*grid, "-k", "0"],
        "Pass --yes to run it": [*grid, "--temperatures", "0.01:5:0.01"],
        "Unknown task 'no-such-grid-task'": [*grid[:2], "no-such-grid-task", *grid[3:]],
        "--benchmark 'arith' names": [*grid[:2], "arith", *grid[3:]],
        "has no split 'no-such-split'": [*grid, "--split", "no-such-split"],
        "Benchmark data file not found": [*grid[:2], "gsm8k", *grid[3:], "--data-dir", str(work / "no-data")],
        "is a file, not a folder": [*grid[:4], str(work / "a-file")],
    }


def _edt_errors() -> dict[str, list[str]]:
    """The EDT options of generate and eval (the default N lives beside the options, not with torch)."""
    return {
        "--edt-theta -1 is out of range": ["generate", "--decoding", "edt", "--edt-theta", "-1", "hi"],
        "--edt-base 1 is out of range": ["eval", "-b", "arith-add", "--decoding", "edt", "--edt-base", "1"],
        "--edt-base is a setting of --decoding edt": ["generate", "--decoding", "static", "--edt-base", "0.5", "hi"],
    }


def _other_input_errors(work: Path) -> dict[str, list[str]]:
    """Inputs the other commands used to refuse only after torch or the model had loaded."""
    data = work / "train.jsonl"
    data.write_text('{"prompt": "1 + 1?", "completion": "2"}\n')
    no_data = work / "no-eval-data"
    no_data.mkdir()
    a_file = work / "merge-into-a-file"
    a_file.write_text("")
    return {
        "config field epochs=0 is invalid": ["train-heads", "--data", str(data), "-o", str(work / "h"), "epochs=0"],
        "Task arith-add has no split 'eval-split'": ["eval", "-b", "arith-add", "--split", "eval-split"],
        f"data file not found: {no_data}": ["eval", "-b", "gsm8k", "--data-dir", str(no_data)],
        "no split 'make-data-split'": ["make-data", "--tasks", "arith-add", "--split", "make-data-split"],
        "--chat-template-kwargs: not valid JSON": ["generate", "--chat-template-kwargs", "{bad", "hi"],
        "is not a benchmark of the study": ["where-it-wins", "benchmarks=[]", f"workdir={work / 'wiw'}"],
        "Unknown task 'no-such-steer-task'": ["steer-report", "-b", "no-such-steer-task"],
        f"--output {a_file} is a file, not a folder": ["merge", "-o", str(a_file), "--heads", "h"],
    }


def _engine_option_errors(work: Path) -> dict[str, list[str]]:
    """Engine option values and the model, heads and adapter paths, on every command that takes
    them: refused before torch, where they used to load torch, transformers or the whole model."""
    data = work / "train-options.jsonl"
    data.write_text('{"prompt": "1 + 1?", "completion": "2"}\n')
    gone = work / "gone"
    return {
        "--dtype 'bogus' is not supported": ["generate", "--dtype", "bogus", "hi"],
        "--device 'tpu' is not a device": ["generate", "--device", "tpu", "hi"],
        "--engine 'nope' is not an engine": ["generate", "--engine", "nope", "hi"],
        "--data-parallel-size 0: must be at least 1": ["eval", "-b", "arith-add", "--dp", "0"],
        "--tensor-parallel-size is a vLLM option": ["generate", "--tp", "2", "hi"],
        f"--model {gone / 'model'}: no such file or folder": ["generate", "-m", str(gone / "model"), "hi"],
        f"--heads {gone / 'heads'}: heads checkpoint not found": ["generate", "--heads", str(gone / "heads"), "hi"],
        f"--adapter {gone / 'adapter'}: not a PEFT adapter": ["generate", "--adapter", str(gone / "adapter"), "hi"],
        "--dtype 'bogus-eval' is not supported": ["eval", "-b", "arith-add", "--dtype", "bogus-eval"],
        f"--heads {gone / 'eval-heads'}: heads checkpoint": [
            *["eval", "-b", "arith-add", "-o", str(work / "eval-out"), "--heads", str(gone / "eval-heads")]
        ],
        "--device 'tpu-grid' is not a device": [
            *["grid-search", "-b", "arith-add", "-o", str(work / "grid-out"), "--device", "tpu-grid"]
        ],
        f"--model {gone / 'grid-model'}: no such": ["grid-search", "-b", "arith-add", "-m", str(gone / "grid-model")],
        "--engine 'nope-data' is not an engine": ["make-data", "--tasks", "arith-add", "--engine", "nope-data"],
        f"--model {gone / 'diagnose-model'}: no such": [
            "diagnose",
            "-b",
            "arith-add",
            "-m",
            str(gone / "diagnose-model"),
        ],
        "--dtype 'bogus-steer' is not supported": ["steer-report", "--dtype", "bogus-steer"],
        f"--heads {gone / 'merge-heads'}: heads checkpoint": [
            *["merge", "-o", str(work / "merged"), "--heads", str(gone / "merge-heads")]
        ],
        "--tensor-parallel-size 0: must be at least 1": ["serve", "--tp", "0"],
        f"field adapter {gone / 'train-adapter'}: not a PEFT": [
            *["train-heads", "--data", str(data), "-o", str(work / "h2"), "--adapter", str(gone / "train-adapter")]
        ],
        f"field model {gone / 'train-model'}: no such": [
            *["train-heads", "--data", str(data), "-o", str(work / "h3"), "-m", str(gone / "train-model")]
        ],
        # --dp > 1 on our engine is CPU processes: a named GPU is refused before torch (auto, after)
        "--data-parallel-size 2 with --engine hf runs CPU processes, not cuda replicas": [
            *["generate", "--dp", "2", "--device", "cuda", "hi"]
        ],
        "runs CPU processes, not cuda:1 replicas": ["eval", "-b", "arith-add", "--dp", "2", "--device", "cuda:1"],
        "runs CPU processes, not mps replicas": [
            *["grid-search", "-b", "arith-add", "-o", str(work / "grid-dp"), "--dp", "2", "--device", "mps"]
        ],
        "--data-parallel-size 3 with --engine hf runs CPU processes, not xpu": [
            *["make-data", "--tasks", "arith-add", "--dp", "3", "--device", "xpu"]
        ],
        "runs CPU processes, not cuda:0 replicas": ["diagnose", "-b", "arith-add", "--dp", "2", "--device", "cuda:0"],
    }


def _decoding_flag_errors() -> dict[str, list[str]]:
    """A -t/-p the decoding would ignore, or one out of range, is refused (it used to be ignored)."""
    return {
        "-t/--temperature is not a setting of --decoding autodeco": ["generate", "-t", "0", "hi"],
        "-p/--top-p is not a setting of --decoding autodeco": ["generate", "-p", "2", "hi"],
        "-t/--temperature is not a setting of --decoding greedy": [
            *["eval", "-b", "arith-add", "--decoding", "greedy", "-t", "0.5"]
        ],
        "--top-p 2 is out of range": ["generate", "--decoding", "static", "-p", "2", "hi"],
        "--temperature -1 is out of range": ["make-data", "--tasks", "arith-add", "-t", "-1"],
        "--temperature-scale is a setting of --decoding autodeco, not static": [
            *["generate", "--decoding", "static", "--temperature-scale", "2", "hi"]
        ],
    }


def _recipe_errors(work: Path) -> dict[str, list[str]]:
    """Study recipe fields out of range, named as fields, before any model loads."""
    return {
        "field k=0 is out of range": ["reproduce", "k=0"],
        "field limit=-1 is out of range": ["reproduce", "limit=-1"],
        "field train: config field epochs=0 is invalid": ["reproduce", "train={epochs: 0}"],
        "field selection_limit=0 is out of range": ["where-it-wins", "selection_limit=0"],
        "field validation_limit=0 is out of range": ["ablation", "validation_limit=0"],
    }


def _train_heads_errors(work: Path) -> dict[str, list[str]]:
    """train-heads --steer and --objective reward: their fields, paths and data, refused before torch
    (steering read its records only after the model had loaded)."""
    data = work / "steer.jsonl"
    data.write_text('{"prompt": "1 + 1?", "completion": "2"}\n')
    bad = work / "steer-bad.jsonl"
    bad.write_text('{"prompt": "1 + 1?", "completion": 3}\n')
    heads = work / "steer-heads"
    heads.mkdir()
    (heads / "autodeco_heads.safetensors").write_bytes(b"")  # exists: the checks never open it
    gone = work / "gone"

    def steer(out: str, *fields: str, data_file: Path = data) -> list[str]:
        return ["train-heads", "--steer", "--data", str(data_file), "-o", str(work / out), *fields]

    reward = ["train-heads", "--objective", "reward", "-o", str(work / "reward")]
    return {
        "config field steer_margin=0.0 is invalid": steer("s1", f"init_heads={heads}", "steer_margin=0"),
        "--steer trains on top of existing heads": steer("s2"),
        "config field epochs=0 is invalid. See": steer("s3", f"init_heads={heads}", "epochs=0"),
        "unknown field 'steer_margn'": steer("s4", "steer_margn=1"),
        f"training data not found: {gone / 'steer.jsonl'}": [
            *steer("s5", f"init_heads={heads}", data_file=gone / "steer.jsonl")
        ],
        f"{bad}:1/completion: is 3; expected a string": steer("s6", f"init_heads={heads}", data_file=bad),
        f"field init_heads {gone / 'steer-heads'}: heads checkpoint not found": [
            *steer("s7", f"init_heads={gone / 'steer-heads'}")
        ],
        f"field model {gone / 'steer-model'}: no such": steer(
            "s8", f"init_heads={heads}", f"model={gone / 'steer-model'}"
        ),
        "field dtype 'bogus-steer-dtype' is not supported": [
            *steer("s9", f"init_heads={heads}", "dtype=bogus-steer-dtype")
        ],
        "config field steps=0 is invalid": [*reward, "tasks=arith-add", "steps=0"],
        "Unknown task 'no-such-reward-task'": [*reward, "tasks=no-such-reward-task"],
        f"field init_heads {gone / 'reward-heads'}: heads": [
            *reward,
            "tasks=arith-add",
            f"init_heads={gone / 'reward-heads'}",
        ],
        **_run_folder_errors(work, data, heads),
    }


# output folders holding an earlier run's checkpoint (the reward one in the old single-folder layout)
EARLIER_RUNS = {
    "earlier-mle": "checkpoints/step-3",
    "earlier-steer": "checkpoints/step-3",
    "earlier-reward": "checkpoint",
}
NO_RUN = ("no-steer-run", "reward-no-train")  # folders the refusals must not create


def _run_folder_errors(work: Path, data: Path, heads: Path) -> dict[str, list[str]]:
    """An earlier run's checkpoints without --resume (all three objectives), --steer --resume with
    nothing to resume, and reward tasks without the splits it reads: refused before torch."""
    for run, checkpoint in EARLIER_RUNS.items():
        (work / run / checkpoint).mkdir(parents=True)
        (work / run / checkpoint / "trainer_state.pt").write_bytes(b"")  # counts as a checkpoint; never opened
    runs = {"mle": work / "earlier-mle", "steer": work / "earlier-steer", "reward": work / "earlier-reward"}
    runs.update(empty=work / NO_RUN[0], no_train=work / NO_RUN[1])
    steer = ["train-heads", "--steer", "--data", str(data), f"init_heads={heads}", "-o"]
    reward = ["train-heads", "--objective", "reward", "-o"]
    return {
        f"output_dir {runs['mle']} already holds checkpoints": [
            *["train-heads", "--data", str(data), "-o", str(runs["mle"])]
        ],
        f"output_dir {runs['steer']} already holds checkpoints": [*steer, str(runs["steer"])],
        f"output_dir {runs['reward']} already holds checkpoints": [*reward, str(runs["reward"]), "tasks=arith-add"],
        f"--resume: output_dir {runs['empty']} holds no --steer checkpoints": [*steer, str(runs["empty"]), "--resume"],
        "task aime24 has no train split": [*reward, str(runs["no_train"]), "tasks=aime24"],
        "task gsm8k has no validation split": [*reward, str(runs["no_train"]), "tasks=gsm8k", "validation_limit=2"],
    }


def vllm_engine_errors(work: Path, installed: bool) -> dict[str, list[str]]:
    """--engine vllm's option values fail as they do on our engine; then vLLM's absence, or (with
    vLLM installed) the model, heads and adapter paths and an adapter vLLM would not apply."""
    work.mkdir(parents=True, exist_ok=True)
    gone = work / "gone"
    vllm = ["--engine", "vllm"]
    errors = {
        "--dtype 'bogus-vllm' is not supported": ["generate", *vllm, "--dtype", "bogus-vllm", "hi"],
        "--device 'tpu-vllm' is not a device": ["eval", "-b", "arith-add", *vllm, "--device", "tpu-vllm"],
        "--tensor-parallel-size 0: must be at least 1": ["generate", *vllm, "--tp", "0", "hi"],
        "--data-parallel-size 0: must be at least 1": ["make-data", "--tasks", "arith-add", *vllm, "--dp", "0"],
    }
    if not installed:
        errors["--engine vllm needs vLLM, which is not installed"] = ["generate", *vllm, "-m", str(gone), "hi"]
        return errors
    adapter = work / "vllm-adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}")
    tap_heads = work / "vllm-tap-heads"  # heads reading a middle layer (only config.json is read before vLLM)
    tap_heads.mkdir(exist_ok=True)
    (tap_heads / "autodeco_heads.safetensors").write_bytes(b"")
    (tap_heads / "config.json").write_text('{"autodeco_cli": {"tap_layer": 13}}')
    return {
        **errors,
        f"--model {gone / 'vllm-model'}: no such": ["generate", *vllm, "-m", str(gone / "vllm-model"), "hi"],
        f"--heads {gone / 'vllm-heads'}: heads checkpoint": [
            *["eval", "-b", "arith-add", *vllm, "-o", str(work / "vllm-eval"), "--heads", str(gone / "vllm-heads")]
        ],
        f"--adapter {gone / 'vllm-adapter'}: not a PEFT": [
            "generate",
            *vllm,
            "--adapter",
            str(gone / "vllm-adapter"),
            "hi",
        ],
        "--engine vllm does not apply LoRA adapters here": ["generate", *vllm, "--adapter", str(adapter), "hi"],
        "read decoder layer 13's output, which --engine vllm": ["generate", *vllm, "--heads", str(tap_heads), "hi"],
        f"--model {gone / 'serve-model'}: no such": ["serve", "-m", str(gone / "serve-model")],
    }


def test_help_and_user_errors_import_no_heavy_module(probe):
    runs, _ = probe
    culprit = _first_heavy(runs)
    assert culprit is None, f"{culprit}: move that import into the function that needs it"


def test_every_registered_command_was_asked_for_help(probe):
    runs, _ = probe
    helped = {tuple(r["argv"][:-1]) for r in runs if r["argv"][-1:] == ["--help"]}
    assert {(), ("generate",), ("eval",), ("train-heads",), ("serve",)} <= helped
    assert all(r["code"] == 0 for r in runs if r["argv"][-1:] == ["--help"])


def test_refused_runs_leave_their_folders_as_they_were(probe, work):
    """Refused before anything is written: no lock, log or staging folder beside the earlier checkpoint."""
    for run, checkpoint in EARLIER_RUNS.items():
        files = {p.relative_to(work / run).as_posix() for p in (work / run).rglob("*") if p.is_file()}
        assert files == {f"{checkpoint}/trainer_state.pt"}, (run, files)
    assert not any((work / name).exists() for name in NO_RUN)


def test_the_error_paths_are_the_user_errors_meant(probe):
    runs, errors = probe
    by_argv = {tuple(r["argv"]): r for r in runs}
    for needle, argv in errors.items():
        run = by_argv[tuple(argv)]
        assert run["code"] == 2 and needle in run["stderr"], (argv, run["code"], run["stderr"])
        assert run["stderr"].count("\n") == 1, run["stderr"]  # one line
