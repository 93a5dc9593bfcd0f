"""The written-down engine interface (`engine.interface.Engine`): our engine, the data-parallel
wrapper and the vLLM engine each satisfy it, with the same `generate` keywords, and report
their name and dtype as results record them. vLLM itself is not needed: its engine class is
checked statically, and built around a stand-in for `vllm.LLM`."""

from __future__ import annotations

import inspect

import pytest

from autodeco_cli.engine.data_parallel import DataParallelEngine
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.interface import Engine, ModelInfo
from autodeco_cli.engine.vllm.engine import EngineModel, VllmEngine

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ENGINES = [GenerationEngine, DataParallelEngine, VllmEngine]


def _members(protocol) -> set[str]:
    """A protocol's members: its annotated attributes and the methods and properties it defines."""
    return set(protocol.__annotations__) | {name for name in vars(protocol) if not name.startswith("_")}


def _class_members(cls) -> set[str]:
    """What a class offers without an instance: class attributes, properties, methods, and the
    instance attributes it (or a base) annotates."""
    annotated = {name for klass in cls.__mro__ for name in getattr(klass, "__annotations__", {})}
    return {name for name in dir(cls) if not name.startswith("_")} | annotated


def _keywords(function) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_interface_names_what_callers_use():
    assert _members(Engine) == {"name", "dtype", "prompt_format", "tokenizer", "lm", "heads", "generate", "close"}
    assert _members(ModelInfo) == {"name", "device", "config"}


@pytest.mark.parametrize("engine_class", ENGINES, ids=lambda cls: cls.__name__)
def test_every_engine_class_has_every_member_and_the_same_generate(engine_class):
    assert _members(Engine) <= _class_members(engine_class)
    assert _keywords(engine_class.generate) == _keywords(Engine.generate)
    assert "__getattr__" not in vars(engine_class)  # members are written down, not forwarded


def test_our_engine_is_an_engine_and_reports_its_dtype(tiny_model_dir, tiny_lm):
    from autodeco_cli.engine.models import load_base_model

    engine = GenerationEngine(tiny_lm, None)
    try:
        assert isinstance(engine, Engine) and isinstance(engine.lm, ModelInfo)
        assert engine.name == "hf" and engine.dtype == "float32"
        assert engine.lm.config is tiny_lm.model.config
    finally:
        engine.close()
    bf16 = GenerationEngine(load_base_model(str(tiny_model_dir), device="cpu", dtype="bfloat16"), None)
    try:
        assert bf16.dtype == "bfloat16"
    finally:
        bf16.close()


def test_data_parallel_engine_speaks_for_its_lead(tiny_lm):
    from autodeco_cli.core.prompt_format import PromptFormat

    lead = GenerationEngine(tiny_lm, None, PromptFormat("be brief"))
    engine = DataParallelEngine(lead, 1, opener=None, open_kwargs={})  # size 1: no worker processes
    try:
        assert isinstance(engine, Engine)
        assert (engine.name, engine.dtype) == ("hf", "float32")
        assert engine.tokenizer is lead.tokenizer and engine.lm is lead.lm and engine.heads is None
        assert engine.prompt_format is lead.prompt_format
    finally:
        engine.close()


def test_vllm_engine_is_an_engine_without_vllm(tiny_lm, tmp_path):
    lm = EngineModel(name="m", tokenizer=tiny_lm.tokenizer, device="vllm:cpu", hidden_size=32)
    engine = VllmEngine(lm, None, llm=None, trace_dir=tmp_path, eos_ids=[0], dtype="bfloat16")
    assert isinstance(engine, Engine) and isinstance(engine.lm, ModelInfo)
    assert (engine.name, engine.dtype, engine.lm.config) == ("vllm", "bfloat16", None)
    # no --dtype: vLLM chooses, and results record the option as given
    assert VllmEngine(lm, None, llm=None, trace_dir=tmp_path, eos_ids=[0]).dtype == "auto"
