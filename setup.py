"""Build step that pyproject.toml cannot express: ship the root-level `evals/` and `recipes/`
folders inside the wheel, as `autodeco_cli/_bundled/{evals,recipes}` (read by
`autodeco_cli.core.bundled`). Everything else about the package is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("evals", "recipes")  # autodeco_cli.core.bundled.BUNDLED


class BuildPyWithBundledData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        target = Path(self.build_lib) / "autodeco_cli" / "_bundled"
        for name in BUNDLED:
            source = ROOT / name
            if not source.is_dir():
                raise FileNotFoundError(f"{source}: build from a source checkout or an sdist made from one")
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithBundledData})
