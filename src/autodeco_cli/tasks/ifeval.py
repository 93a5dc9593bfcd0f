"""IFEval scoring with lm-eval 0.4.13's instruction checkers, offline.

The checkers are not rewritten here: they come from lm-eval (the `ifeval` extra, installed
with `pip install --no-deps lm-eval==0.4.13` plus nltk, langdetect and immutabledict). Two
things stand in the way of using them as installed, and both are handled here:

* `import lm_eval.tasks` pulls in `datasets` and the whole harness, which the --no-deps
  install lacks. Only the three files of `lm_eval/tasks/ifeval/` are needed, so they are
  imported under placeholder parent packages.
* The checkers need NLTK's `punkt_tab` sentence model, which no PyPI package ships, and they
  call `nltk.download` at import when it is missing. If a real `punkt_tab` is installed it is
  used. Otherwise a small English parameter set (a list of common abbreviations, no learned
  statistics) is written to a temporary NLTK data folder, and `nltk.download` is disabled while
  importing, so nothing ever touches the network. The fallback only changes sentence
  splitting, which two of the 25 instruction types use:
  `length_constraints:number_sentences` (count_sentences) and
  `change_case:capital_word_frequency` (word_tokenize splits sentences first). Together they
  appear in 64 of the 541 prompts. `sentence_splitter()` says which one is in use.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.util
import shutil
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import UserError
from .types import Doc, Score

INSTALL_HINT = "pip install 'autodeco-cli[ifeval]' && pip install --no-deps lm-eval==0.4.13"
AFFECTED_BY_FALLBACK = ("length_constraints:number_sentences", "change_case:capital_word_frequency")
# The per-sample counts `score_ifeval` records, which `aggregate_metrics` turns into accuracies.
METRIC_KEYS = (
    "prompt_strict",
    "prompt_loose",
    "inst_strict_correct",
    "inst_strict_total",
    "inst_loose_correct",
    "inst_loose_total",
)

# Common English abbreviations that end in a period but rarely end a sentence. Punkt stores
# them lowercased, without the final period.
_ABBREVIATIONS = """
mr mrs ms dr prof sr jr st mt ave rd blvd vs etc e.g i.e cf al approx dept est fig no nos
vol vols ed eds p pp ch sec inc ltd co corp bros gen gov sen rep capt lt col sgt maj adm
rev hon jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun
u.s u.k u.n a.m p.m ph.d b.a m.a b.sc m.sc d.c n.y l.a
""".split()

_state: dict[str, str] = {}


def sentence_splitter() -> str:
    """'punkt_tab' when NLTK's trained model is installed, 'fallback' when the built-in
    abbreviation list is used, 'unloaded' before the checkers are first used."""
    return _state.get("splitter", "unloaded")


def _require_dependencies() -> None:
    missing = [
        name for name in ("lm_eval", "nltk", "langdetect", "immutabledict") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise UserError(f"IFEval scoring needs {', '.join(missing)}", INSTALL_HINT)


def _write_fallback_punkt() -> Path:
    root = Path(tempfile.mkdtemp(prefix="autodeco-nltk-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    english = root / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True)
    (english / "abbrev_types.txt").write_text("\n".join(_ABBREVIATIONS) + "\n", encoding="utf-8")
    for empty in ("collocations.tab", "sent_starters.txt", "ortho_context.tab"):
        (english / empty).write_text("", encoding="utf-8")
    return root


def _ensure_punkt() -> None:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        _state["splitter"] = "punkt_tab"
    except LookupError:
        nltk.data.path.append(str(_write_fallback_punkt()))
        _state["splitter"] = "fallback"


@contextmanager
def _no_nltk_download() -> Iterator[None]:
    import nltk

    def refuse(*_args: Any, **_kwargs: Any) -> bool:
        raise RuntimeError("autodeco never downloads NLTK data during scoring")

    original = nltk.download
    nltk.download = refuse
    try:
        yield
    finally:
        nltk.download = original


@contextmanager
def _placeholder_packages() -> Iterator[None]:
    """Make `lm_eval.tasks.ifeval.*` importable without running `lm_eval/tasks/__init__.py`."""
    spec = importlib.util.find_spec("lm_eval")
    tasks_dir = Path(spec.origin).parent / "tasks"
    added = []
    for name, path in (("lm_eval.tasks", tasks_dir), ("lm_eval.tasks.ifeval", tasks_dir / "ifeval")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
            added.append(name)
    try:
        yield
    finally:
        # The loaded submodules keep their own references; dropping the placeholders lets a
        # full lm-eval install import the real packages later.
        for name in added:
            sys.modules.pop(name, None)


@functools.lru_cache(maxsize=1)
def _checker_module() -> Any:
    """lm-eval's `tasks/ifeval/utils.py`, which holds the strict and loose test functions."""
    _require_dependencies()
    _ensure_punkt()
    import langdetect

    # langdetect is randomised; a fixed seed makes `language:response_language` reproducible.
    langdetect.DetectorFactory.seed = 0
    try:
        with _no_nltk_download(), _placeholder_packages():
            return importlib.import_module("lm_eval.tasks.ifeval.utils")
    except ImportError as exc:
        raise UserError(f"Could not load lm-eval's IFEval checkers: {exc}", INSTALL_HINT) from exc


def _input_example(doc: Doc, module: Any) -> Any:
    return module.InputExample(
        key=doc.meta.get("key", doc.doc_id),
        instruction_id_list=list(doc.gold["instruction_id_list"]),
        prompt=doc.meta.get("source_prompt", doc.prompt),
        kwargs=list(doc.gold["kwargs"]),
    )


def score_ifeval(doc: Doc, text: str) -> Score:
    """Prompt- and instruction-level results, strict and loose; `correct` is prompt-level strict."""
    module = _checker_module()
    example = _input_example(doc, module)
    strict = module.test_instruction_following_strict(example, text)
    loose = module.test_instruction_following_loose(example, text)
    n_strict = sum(strict.follow_instruction_list)
    n_total = len(strict.follow_instruction_list)
    metrics = {
        "prompt_strict": float(strict.follow_all_instructions),
        "prompt_loose": float(loose.follow_all_instructions),
        "inst_strict_correct": float(n_strict),
        "inst_strict_total": float(n_total),
        "inst_loose_correct": float(sum(loose.follow_instruction_list)),
        "inst_loose_total": float(len(loose.follow_instruction_list)),
    }
    return Score(bool(strict.follow_all_instructions), f"{n_strict}/{n_total}", metrics)


def aggregate_metrics(samples: list[dict[str, float]]) -> dict[str, float]:
    """lm-eval's four IFEval accuracies from per-sample counts: prompt-level ones average over
    samples, instruction-level ones pool the instructions of every sample."""

    def total(key: str) -> float:
        return sum(m.get(key, 0.0) for m in samples)

    return {
        "prompt_level_strict_acc": total("prompt_strict") / len(samples),
        "prompt_level_loose_acc": total("prompt_loose") / len(samples),
        "inst_level_strict_acc": total("inst_strict_correct") / max(total("inst_strict_total"), 1.0),
        "inst_level_loose_acc": total("inst_loose_correct") / max(total("inst_loose_total"), 1.0),
    }
