"""Where the shipped task definitions (`evals/`) and recipes (`recipes/`) are.

Both live at the repository root. A wheel carries them as `autodeco_cli/_bundled/evals` and
`autodeco_cli/_bundled/recipes` (setup.py copies them there at build time); a source checkout or
an editable install has no `_bundled/` and reads them from the root of the checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED = ("evals", "recipes")


def bundled_dir(name: str) -> Path:
    """The installed copy of `name` (one of BUNDLED), else the source checkout's own folder."""
    if name not in BUNDLED:
        raise ValueError(f"{name!r} is not bundled data (one of {', '.join(BUNDLED)})")
    installed = resources.files("autodeco_cli") / "_bundled" / name
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[3] / name


def bundled_recipe(name: str) -> Path | None:
    """A shipped recipe by file name, with or without `.yaml`; None when there is none."""
    folder = bundled_dir("recipes")
    for candidate in (name, f"{name}.yaml"):
        path = folder / candidate
        if path.is_file():
            return path
    return None


def bundled_recipe_names() -> list[str]:
    return sorted(path.name for path in bundled_dir("recipes").glob("*.yaml"))
