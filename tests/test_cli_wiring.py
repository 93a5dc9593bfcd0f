"""The command line's wiring: every command module registers, commands without tests of their own
parse their options, bad input is one line on stderr with exit code 2, all modules print through
the two shared consoles, and `mode`/`k` are checked by the library (one message, one place).

Everything runs through the console entry point in-process (the `cli` fixture of conftest.py);
no case here loads a model except the last two (the tiny one).
"""

from __future__ import annotations

import importlib

import pytest
import typer
from rich.console import Console

from autodeco_cli import commands
from autodeco_cli.core import consoles

NO_MODEL = "/nonexistent/model-that-never-loads"


def one_line_error(result, *needles: str) -> str:
    code, _, err = result
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---- registration ----------------------------------------------------------------------------------


def test_every_command_module_registers_its_commands():
    from autodeco_cli.cli import app

    names = [c.name for c in app.registered_commands]
    expected = {
        "generate", "make-data", "train-heads", "eval", "compare", "grid-search",
        "ablation", "reproduce", "where-it-wins", "steer-report", "merge", "split", "tasks", "serve", "diagnose",
    }  # fmt: skip
    assert set(names) == expected and len(names) == len(expected)
    # generate is a command module like the others, not defined in cli.py
    generate = next(c for c in app.registered_commands if c.name == "generate")
    assert generate.callback.__module__ == "autodeco_cli.commands.generate"


def test_register_all_raises_on_a_missing_command_module(monkeypatch):
    monkeypatch.setattr(commands, "COMMAND_MODULES", ("generate", "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        commands.register_all(typer.Typer())


def test_commands_and_runtime_print_through_the_two_shared_consoles():
    modules = [importlib.import_module(f"autodeco_cli.commands.{name}") for name in commands.COMMAND_MODULES]
    modules += [importlib.import_module(name) for name in ("autodeco_cli.cli", "autodeco_cli.commands.common")]
    modules.append(importlib.import_module("autodeco_cli.engine.runtime"))
    shared = {id(consoles.console), id(consoles.err_console)}
    for module in modules:
        found = [value for value in vars(module).values() if isinstance(value, Console)]
        assert all(id(c) in shared for c in found), module.__name__
    assert consoles.err_console.stderr and not consoles.console.stderr


# ---- commands without tests of their own: --help and one bad input each ----------------------------


@pytest.mark.parametrize(
    "command, options",
    [
        ("merge", ["--output", "--heads", "--model", "--dtype"]),
        ("split", ["merged", "--base-output", "--heads-output"]),
        ("steer-report", ["--benchmark", "--n", "--offset", "--heads", "--output"]),
        ("reproduce", ["overrides", "--config", "--quick"]),
    ],
)
def test_command_help_names_its_options(cli, command, options):
    code, out, err = cli(command, "--help")
    assert code == 0, err
    for option in options:
        assert option in out, (command, option)


def test_merge_into_a_non_empty_folder_is_one_line(cli, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("keep me")
    # a model folder and heads the up-front path checks accept, but that no loader could open
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "autodeco_heads.safetensors").write_bytes(b"")
    result = cli("merge", "-o", tmp_path / "taken", "--heads", tmp_path / "heads", "-m", tmp_path / "model")
    one_line_error(result, "is not empty")
    assert (tmp_path / "taken" / "file.txt").read_text() == "keep me"


def test_split_of_a_missing_folder_is_one_line(cli, tmp_path):
    missing = tmp_path / "no-merged-folder"
    result = cli("split", missing, "--base-output", tmp_path / "base", "--heads-output", tmp_path / "heads")
    one_line_error(result, str(missing))
    assert not (tmp_path / "base").exists() and not (tmp_path / "heads").exists()


def test_steer_report_with_a_missing_model_is_one_line(cli, tmp_path):
    one_line_error(cli("steer-report", "-b", "arith-add", "--n", "2", "-m", NO_MODEL), NO_MODEL)


def test_reproduce_with_an_unknown_field_is_one_line(cli, tmp_path):
    one_line_error(cli("reproduce", "limt=5"), "unknown field 'limt'", "limit")


# ---- validation lives in the library: the command reports its message ------------------------------


def test_eval_k_is_checked_by_the_library(cli, tiny_model_dir, tmp_path, fake_registry):
    from autodeco_cli.core.errors import UserError
    from autodeco_cli.evaluation.runner import plan_strategies

    with pytest.raises(UserError) as library:
        plan_strategies([], 0, [0])
    result = cli("eval", "-b", "fake", "-m", tiny_model_dir, "-k", "0", "--decoding", "static", "-o", tmp_path / "out")
    assert one_line_error(result) == f"error: {library.value.one_line()}"
    assert not (tmp_path / "out").exists()


def test_grid_search_mode_is_checked_by_the_library(cli, tiny_model_dir, tmp_path, fake_registry):
    result = cli("grid-search", "-b", "fake", "--mode", "random", "-m", tiny_model_dir, "-o", tmp_path / "grid")
    one_line_error(result, "--mode 'random' is not a mode", "full")
    assert not (tmp_path / "grid").exists()


# ---- train-heads --steer reads the steer_* fields from the same recipe and overrides ---------------


def test_steer_fields_reach_the_steering_config_before_the_model_loads(cli, tmp_path):
    common = ["train-heads", "--steer", f"data={tmp_path / 'd.jsonl'}", f"model={NO_MODEL}", "init_heads=runs/heads"]
    one_line_error(cli(*common, "steer_margin=0"), "steer_margin=0.0 is invalid")
    one_line_error(cli(*common, "steer_margn=1"), "unknown field 'steer_margn'", "steer_margin")
    # without --steer they are not training fields
    one_line_error(cli(*common[:1], *common[2:], "steer_margin=1"), "unknown field 'steer_margin'")
