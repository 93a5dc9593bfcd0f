"""What the package ships besides code: every task definition in evals/ validates on its own, every
recipe in recipes/ is found by name from any folder, and the heads under assets/heads/ load and
agree with their config.json and with the model they are for.

(Each recipe loading into its config class is test_recipes.py; the wheel carrying these files is
test_wheel.py.)
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.tasks import registry
from autodeco_cli.training.recipes import read_recipe

ROOT = Path(__file__).resolve().parents[1]
EVALS = sorted((ROOT / "evals").glob("*.yaml"))
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
HEADS = sorted(p for p in (ROOT / "src" / "autodeco_cli" / "assets" / "heads").iterdir() if p.is_dir())
DATA_FREE_BUILDERS = ("arithmetic", *registry.GENERATED)  # docs are generated, no data files


# ---- evals/ ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EVALS, ids=lambda p: p.name)
def test_task_definition_validates_alone(path, tmp_path, monkeypatch):
    """Loaded through the registry from a folder holding only this file."""
    shutil.copy2(path, tmp_path / path.name)
    monkeypatch.setenv(registry.EVALS_DIR_ENV, str(tmp_path))
    (name,) = registry.list_tasks()
    task = registry.get_task(name)
    assert name == path.stem, "a task's file is named after the task"
    assert task.description and task.max_new_tokens > 0 and "test" in task.splits
    for data in task.data_files():
        assert re.fullmatch(r"[0-9a-f]{64}", data.sha256 or ""), f"{data.path}: sha256"
        assert data.url or data.source, f"{data.path}: names neither a url nor a public source"
    if task.builder in DATA_FREE_BUILDERS:
        assert not task.data_files()
        for split in task.splits:
            docs = task.load_docs(split=split, limit=3)
            assert len(docs) == 3 and len({d.doc_id for d in docs}) == 3, split
            assert all(d.prompt.strip() for d in docs), split


def test_evals_readme_names_every_task():
    readme = (ROOT / "evals" / "README.md").read_text(encoding="utf-8")
    assert [p.stem for p in EVALS if p.stem not in readme] == []


# ---- recipes/ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_is_found_by_name_from_any_folder(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here
    expected = read_recipe(path)
    assert read_recipe(path.name) == expected
    assert read_recipe(path.stem) == expected
    assert read_recipe(f"recipes/{path.name}") == expected  # as the docs spell it, from elsewhere


def test_missing_recipe_names_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="recipe not found") as info:
        read_recipe("no-such-recipe.yaml")
    assert all(p.name in info.value.one_line() for p in RECIPES)


# ---- assets/heads/ -----------------------------------------------------------------------------


def test_every_shipped_heads_folder_is_found_for_its_model():
    from autodeco_cli.engine.heads_source import packaged_heads_path
    from autodeco_cli.engine.model_names import MODEL_ALIASES

    assert HEADS, "no shipped heads"
    for folder in HEADS:
        assert folder.name in MODEL_ALIASES, f"{folder.name}: not a model alias, so never used"
        assert packaged_heads_path(folder.name).resolve() == folder.resolve()


@pytest.mark.parametrize("folder", HEADS, ids=lambda p: p.name)
def test_shipped_heads_load_and_match_their_config(folder):
    from safetensors import safe_open

    from autodeco_cli.core.heads import load_heads

    config = json.loads((folder / "config.json").read_text())
    ours = config["autodeco_cli"]
    heads = load_heads(folder)  # refuses NaN/inf weights and a hidden size that disagrees
    assert heads.config.hidden_size == config["hidden_size"] == ours["hidden_size"]
    assert heads.config.head_width == ours["head_width"]
    assert heads.config.use_enhanced_features == config["use_enhanced_features"] == ours["use_enhanced_features"]
    assert heads.config.base_model == config["base_model_name_or_path"] == ours["base_model"] == folder.name
    with safe_open(str(folder / "autodeco_heads.safetensors"), framework="pt") as weights:
        assert set(weights.keys()) == set(heads.state_dict())  # no tensor left over or missing
    provenance = ours["provenance"]
    assert provenance["trained_with"] and provenance["config"]["model"] == folder.name
    assert provenance["config"]["head_width"] == ours["head_width"]
    assert (folder / "PROVENANCE.md").read_text(encoding="utf-8").strip()


@pytest.mark.parametrize("folder", HEADS, ids=lambda p: p.name)
def test_shipped_heads_fit_their_model(folder):
    """The hidden size the heads expect is the base model's (read from the GGUF's metadata)."""
    from autodeco_cli.engine.model_names import MODEL_ALIASES
    from autodeco_cli.engine.models import alias_gguf_path

    if importlib.util.find_spec(MODEL_ALIASES[folder.name][0]) is None:
        pytest.skip(f"needs {MODEL_ALIASES[folder.name][2]}")
    import gguf

    reader = gguf.GGUFReader(str(alias_gguf_path(folder.name)))
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    field = reader.fields[f"{architecture}.embedding_length"]
    assert int(field.parts[field.data[0]][0]) == json.loads((folder / "config.json").read_text())["hidden_size"]
