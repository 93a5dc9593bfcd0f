"""Every shipped recipe loads into its config class (torchtune's rule): a typo in a shipped
YAML must fail here, not an hour into a run."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from autodeco_cli.studies.ablation import AblationConfig
from autodeco_cli.studies.reproduce import ReproduceConfig
from autodeco_cli.studies.where_it_wins import WhereItWinsConfig
from autodeco_cli.training.config import RewardConfig, TrainConfig
from autodeco_cli.training.recipes import build_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIG_CLASSES = {
    "reproduce-cpu.yaml": ReproduceConfig,
    "ablation-cpu.yaml": AblationConfig,
    "where-it-wins-cpu.yaml": WhereItWinsConfig,
    "reward-cpu.yaml": RewardConfig,
}
# nested blocks that are themselves another config's fields
NESTED = {"train": TrainConfig, "mle": TrainConfig, "reward": RewardConfig}


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_shipped_recipe_loads(recipe):
    cls = CONFIG_CLASSES.get(recipe, TrainConfig)
    config = build_config(cls, RECIPES / recipe, [])
    names = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(RewardConfig)}
    for key, nested_cls in NESTED.items():
        block = getattr(config, key, None)
        if isinstance(block, dict):
            unknown = set(block) - {f.name for f in fields(nested_cls)}
            assert not unknown, f"{recipe}: {key} has unknown fields {unknown}"
    for row in getattr(config, "rows", []) or []:
        assert set(row.get("overrides", {})) <= names, f"{recipe}: row {row['name']} overrides unknown fields"
        assert row["data"] in config.data or all(part in config.data for part in row["data"].split("+"))
    if isinstance(config, RewardConfig):
        config.validate()
