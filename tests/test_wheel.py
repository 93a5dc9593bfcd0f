"""The package as a user installs it: an sdist built from this tree, a wheel built from that sdist,
installed into a fresh venv and run from a folder outside the checkout.

Checks that the wheel carries evals/, recipes/ and the shipped heads, and that `autodeco eval`
finds its task definitions and `autodeco train-heads -c NAME` its recipe there. Offline: the
build uses this venv's setuptools (--no-build-isolation), and the fresh venv reaches this venv's
packages through a .pth line placed after its own site-packages, so `autodeco_cli` comes from the
wheel and the dependencies (torch, transformers, ...) are not installed again.

Slow (a build and several interpreter starts, ~1 min); `make test-wheel` runs this file alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import write_jsonl

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SDIST_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
SDIST_FOLDERS = ("src", "evals", "recipes")


def _run(args, cwd, env=None, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel path, sdist path): the sdist from a copy of the tree, the wheel from the sdist."""
    pytest.importorskip(
        "setuptools", minversion="70.1", reason="the offline build uses this venv's setuptools>=70.1 (the dev extra)"
    )
    work = tmp_path_factory.mktemp("build")
    tree = work / "tree"  # a copy, so the checkout gains no build/ or egg-info folders
    tree.mkdir()
    for name in SDIST_FILES:
        shutil.copy2(ROOT / name, tree / name)
    for name in SDIST_FOLDERS:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = work / "dist"
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"], cwd=tree)
    (sdist,) = dist.glob("*.tar.gz")
    wheels = work / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, sdist], cwd=work
    )
    (wheel,) = wheels.glob("*.whl")
    return wheel, sdist


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """A fresh venv with only the wheel installed; returns (bin folder, env for subprocesses, a cwd)."""
    wheel, _ = built
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], cwd=venv)
    site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).stdout.strip()
    )
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_wheel_deps.pth").write_text("".join(f"{p}\n" for p in sorted(here)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AUTODECO_EVALS_DIR", "VIRTUAL_ENV")}
    env.update(AUTODECO_CACHE_DIR=str(venv / "cache"), COLUMNS="200", OMP_NUM_THREADS="1")
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # no evals/ or recipes/ here or above
    return venv / "bin", env, elsewhere


def test_wheel_and_sdist_carry_the_bundled_data(built):
    wheel, sdist = built
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("evals", "recipes"):
        shipped = {p.name for p in (ROOT / folder).iterdir() if p.is_file()}
        assert shipped and {f"autodeco_cli/_bundled/{folder}/{n}" for n in shipped} <= names, folder
    heads = ROOT / "src/autodeco_cli/assets/heads/smollm2-135m-instruct"
    assert {f"autodeco_cli/assets/heads/smollm2-135m-instruct/{p.name}" for p in heads.iterdir()} <= names
    kernels = ROOT / "src/autodeco_cli/assets/kernels"  # C sources cpu_kernels builds on first use, their headers
    assert {f"autodeco_cli/assets/kernels/{p.name}" for p in [*kernels.glob("*.c"), *kernels.glob("*.h")]} <= names
    assert not any(n.startswith(("evals/", "recipes/", "tests/")) for n in names)
    listing = _run(["tar", "-tzf", sdist], cwd=sdist.parent).stdout
    assert "/evals/arith-add.yaml" in listing and "/recipes/smollm2-135m-cpu.yaml" in listing and "/setup.py" in listing


def test_installed_package_finds_tasks_and_recipes_outside_the_checkout(installed):
    bin_dir, env, cwd = installed
    probe = (
        "import json, sys, autodeco_cli\n"
        "from autodeco_cli.core.bundled import bundled_dir\n"
        "from autodeco_cli.tasks.registry import evals_dir, list_tasks\n"
        "from autodeco_cli.training.recipes import read_recipe\n"
        "print(json.dumps({'package': autodeco_cli.__file__, 'evals': str(evals_dir()), 'recipes': "
        "str(bundled_dir('recipes')),\n"
        "  'tasks': list_tasks(), 'by_name': read_recipe('smollm2-135m-cpu'), 'by_file': "
        "read_recipe('smollm2-135m-cpu.yaml'),\n"
        "  'by_repo_path': read_recipe('recipes/reproduce-cpu.yaml'), 'path': sys.path}))\n"
    )
    seen = json.loads(_run([bin_dir / "python", "-c", probe], cwd=cwd, env=env).stdout)
    venv = str(bin_dir.parent)
    assert seen["package"].startswith(venv), seen["package"]
    assert seen["evals"].startswith(venv) and seen["recipes"].startswith(venv)
    assert not any(p.startswith(str(ROOT / "src")) for p in seen["path"])
    assert seen["tasks"] == sorted(p.stem for p in (ROOT / "evals").glob("*.yaml"))
    assert seen["by_name"] == seen["by_file"] and seen["by_name"]["model"] == "smollm2-135m-instruct"
    assert seen["by_repo_path"]["workdir"]


def test_installed_cli_evaluates_a_shipped_task(installed, tiny_model_dir):
    bin_dir, env, cwd = installed
    assert _run([bin_dir / "autodeco", "eval", "--help"], cwd=cwd, env=env).returncode == 0
    out = cwd / "eval-out"
    args = [
        "eval",
        "-b",
        "arith-add",
        "--model",
        tiny_model_dir,
        "--limit",
        "2",
        "-k",
        "1",
        "--decoding",
        "greedy",
        "--max-new-tokens",
        "3",
        "-o",
        out,
    ]
    _run([bin_dir / "autodeco", *args], cwd=cwd, env=env)
    result = json.loads((out / "greedy" / "results.json").read_text())["results"]["arith-add"]
    assert result["n_questions"] == 2
    unknown = _run(
        [bin_dir / "autodeco", "eval", "-b", "no-such-task", "--model", tiny_model_dir, "-o", out],
        cwd=cwd,
        env=env,
        check=False,
    )
    assert unknown.returncode == 2 and "arith-add" in unknown.stderr  # the error lists the shipped tasks


def test_installed_cli_trains_from_a_shipped_recipe_by_name(installed, tiny_model_dir):
    bin_dir, env, cwd = installed
    data = write_jsonl(
        cwd / "train.jsonl", [{"prompt": f"What is {i} + {i}?", "completion": f"{2 * i}"} for i in range(8)]
    )
    out = cwd / "heads"
    args = [
        "train-heads",
        "-c",
        "smollm2-135m-cpu",
        f"model={tiny_model_dir}",
        f"data={data}",
        f"output_dir={out}",
        "max_steps=1",
        "threads=1",
    ]
    _run([bin_dir / "autodeco", *args], cwd=cwd, env=env)
    config = json.loads((out / "config.json").read_text())
    assert (out / "autodeco_heads.safetensors").is_file() and config["hidden_size"] == 32
