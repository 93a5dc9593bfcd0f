"""The training-free adaptive decoders (min-p, top-nσ, EDT): their math against hand-computed
rows and transformers, strategy validation, generation on the tiny model, and a grid-search
family end to end."""

from __future__ import annotations

import io
import json
import math
import sys

import pytest
import torch

from autodeco_cli.core.decoding import make_strategy, strategy_slug
from autodeco_cli.core.distribution import (
    MIN_TEMPERATURE,
    decoding_logits,
    decoding_logits_and_temperature,
    edt_temperature,
    min_p_keep,
    token_entropy,
    top_n_sigma_keep,
)
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.requests import Request, build_requests
from autodeco_cli.evaluation.runner import run_eval
from autodeco_cli.evaluation.settings import EvalSettings
from conftest import TINY_HIDDEN

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PROMPTS = [
    "hello",
    "What is 27 + 82? Tell me a joke about a cat.",
    "The quick brown fox",
    "Once upon a time there was a small model",
]
MAX_NEW = 12


# ---- min-p ----------------------------------------------------------------------------------


def test_min_p_keep_hand_row():
    probs = torch.tensor([[0.5, 0.25, 0.1, 0.1, 0.05]])
    # threshold 0.2 x 0.5 = 0.1: the two 0.1 tokens sit exactly on it and stay (>=, as transformers)
    assert min_p_keep(probs, 0.2).tolist() == [[True, True, True, True, False]]
    assert min_p_keep(probs, 0.5).tolist() == [[True, True, False, False, False]]
    assert min_p_keep(probs, 0.0).all()  # 0 keeps every token
    assert min_p_keep(probs, 1.0).tolist() == [[True, False, False, False, False]]  # the top token always stays
    # per-row min_p, as the sampler batches them
    rows = torch.cat([probs, probs.flip(-1)])
    assert min_p_keep(rows, torch.tensor([0.5, 0.2])).sum(-1).tolist() == [2, 4]


def test_min_p_is_applied_after_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.1, 0.1, 0.05]]))
    # at T=1 min_p=0.3 cuts at 0.15: two tokens; at T=2 the ratios are square-rooted
    # (0.25/0.5 -> 0.71, 0.1/0.5 -> 0.45, 0.05/0.5 -> 0.32), so all five pass 0.3
    assert torch.isfinite(decoding_logits(logits, 1.0, 1.0, min_p=0.3)).sum() == 2
    assert torch.isfinite(decoding_logits(logits, 2.0, 1.0, min_p=0.3)).sum() == 5
    assert torch.isfinite(decoding_logits(logits, 0.5, 1.0, min_p=0.3)).sum() == 1


@pytest.mark.parametrize(
    "T, p, top_k, min_p", [(1.0, 1.0, None, 0.1), (0.7, 1.0, None, 0.05), (1.5, 0.9, None, 0.2), (1.0, 0.8, 20, 0.02)]
)
def test_min_p_chain_matches_transformers(T, p, top_k, min_p):
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(64, 101, generator=gen) * 3
    scores = TemperatureLogitsWarper(T)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if p < 1.0:
        scores = TopPLogitsWarper(p)(None, scores)
    theirs = torch.isfinite(MinPLogitsWarper(min_p)(None, scores))
    ours = torch.isfinite(decoding_logits(logits, T, p, top_k, min_p=min_p))
    assert torch.equal(ours, theirs)
    assert not ours.all()  # the cut did something on these rows


# ---- top-nσ ---------------------------------------------------------------------------------


def test_top_n_sigma_keep_hand_row():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])  # mean 2, σ = sqrt(10/4) = 1.5811 (Bessel)
    assert top_n_sigma_keep(logits, 1.0).tolist() == [[True, True, False, False, False]]  # >= 2.42
    # n=1.3: 4 - 1.3·1.5811 = 1.944 keeps three; the population σ (1.414) would give 2.16 and keep two
    assert top_n_sigma_keep(logits, 1.3).tolist() == [[True, True, True, False, False]]
    assert top_n_sigma_keep(logits, 0.0).tolist() == [[True, False, False, False, False]]  # the top token always stays
    assert top_n_sigma_keep(logits, 10.0).all()
    # -inf logits (already masked) are left out of σ instead of turning it into NaN
    masked = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, float("-inf")]])
    assert top_n_sigma_keep(masked, 1.3).tolist() == [[True, True, True, False, False, False]]


def test_top_n_sigma_kept_set_does_not_depend_on_temperature():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 200, generator=gen) * 2
    raw = top_n_sigma_keep(logits, 1.0)
    assert 0 < raw.sum() < raw.numel()
    for T in (0.25, 0.7, 1.0, 3.0):
        assert torch.equal(top_n_sigma_keep(logits / T, 1.0), raw)  # same n on logits/T: same set
        assert torch.equal(torch.isfinite(decoding_logits(logits, T, 1.0, n_sigma=1.0)), raw)
    # the survivors are then tempered: T changes the distribution, not the support
    cold, hot = (torch.softmax(decoding_logits(logits, T, 1.0, n_sigma=1.0), -1) for T in (0.5, 2.0))
    assert (cold.max(-1).values > hot.max(-1).values).all()


# ---- EDT ------------------------------------------------------------------------------------


def test_edt_temperature_hand_cases():
    uniform = torch.zeros(1, 4)  # H = ln 4
    assert edt_temperature(uniform, 1.0, 0.8, 1.0).item() == pytest.approx(0.8 ** (1 / math.log(4)), rel=1e-6)
    skewed = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))  # H = 1.5 ln 2
    assert token_entropy(skewed).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert edt_temperature(skewed, 0.7, 0.8, 0.5).item() == pytest.approx(
        0.7 * 0.8 ** (0.5 / (1.5 * math.log(2))), rel=1e-6
    )
    # per-row parameters
    both = torch.cat([torch.zeros(1, 3), skewed])
    t = edt_temperature(both, torch.tensor([1.0, 0.7]), torch.tensor([0.5, 0.8]), torch.tensor([2.0, 0.5]))
    assert t.shape == (2, 1)
    assert t[0, 0].item() == pytest.approx(0.5 ** (2.0 / math.log(3)), rel=1e-6)


def test_edt_temperature_rises_with_entropy_and_is_safe_at_zero_entropy():
    # sharper rows (larger gap) have lower entropy and must get lower T, bounded by T0
    rows = torch.stack([torch.tensor([gap, 0.0, 0.0, 0.0, 0.0]) for gap in (8.0, 4.0, 2.0, 1.0, 0.0)])
    entropies = token_entropy(rows).squeeze(-1)
    temperatures = edt_temperature(rows, 1.2, 0.8, 1.0).squeeze(-1)
    assert (entropies.diff() > 0).all() and (temperatures.diff() > 0).all()
    assert (temperatures < 1.2).all()
    # one-hot rows: H = 0 (exactly, with -inf) or ~1e-40; both give the floor, never NaN
    one_hot = torch.tensor([[0.0, float("-inf"), float("-inf")], [200.0, 0.0, 0.0]])
    assert edt_temperature(one_hot, 1.0, 0.8, 1.0).squeeze(-1).tolist() == pytest.approx(
        [MIN_TEMPERATURE, MIN_TEMPERATURE]
    )


def test_edt_decoding_uses_its_dynamic_temperature():
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 50, generator=gen) * torch.linspace(0.5, 6, 6).unsqueeze(-1)
    decoded, used = decoding_logits_and_temperature(logits, 0.9, 1.0, edt_base=0.8, edt_theta=0.5)
    expected = edt_temperature(logits, 0.9, 0.8, 0.5)
    assert torch.allclose(used, expected)
    assert torch.allclose(decoded, decoding_logits(logits, expected, 1.0))
    assert used.unique().numel() == 6  # one T per row


# ---- strategies -----------------------------------------------------------------------------


def test_strategy_labels_slugs_and_defaults():
    cases = {
        make_strategy("min-p"): ("min-p(T=1, min_p=0.1)", "min-p-T1-min-p0.1"),
        make_strategy("min-p", 0.7, 0.9, 20, min_p=0.05): (
            "min-p(T=0.7, min_p=0.05, p=0.9, k=20)",
            "min-p-T0.7-min-p0.05-p0.9-k20",
        ),
        make_strategy("top-n-sigma"): ("top-n-sigma(T=1, n=1)", "top-n-sigma-T1-n1"),
        make_strategy("top-n-sigma", 1.5, n_sigma=0.5): ("top-n-sigma(T=1.5, n=0.5)", "top-n-sigma-T1.5-n0.5"),
        make_strategy("edt"): ("edt(T=1, N=0.8, theta=1)", "edt-T1-N0.8-theta1"),
        make_strategy("edt", 0.5, edt_base=0.9, edt_theta=0.1): (
            "edt(T=0.5, N=0.9, theta=0.1)",
            "edt-T0.5-N0.9-theta0.1",
        ),
    }
    for strategy, (label, slug) in cases.items():
        assert (strategy.label, strategy_slug(strategy)) == (label, slug)
    edt = make_strategy("edt")
    assert (edt.temperature, edt.top_p, edt.top_k, edt.edt_base, edt.edt_theta) == (1.0, 1.0, None, 0.8, 1.0)
    # the fields older folders' run_config.json lack are left out, so those folders still resume
    old_keys = {"name", "temperature", "top_p", "top_k", "temperature_scale", "top_p_scale", "active_heads"}
    for name in ("greedy", "static", "autodeco", "mean-shift"):
        fixed = (0.5, 0.9) if name in ("static", "mean-shift") else ()  # greedy and autodeco refuse -t/-p
        assert set(make_strategy(name, *fixed).to_dict()) == old_keys
    assert make_strategy("static", 0.6, 0.95).to_dict() == {
        "name": "static",
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": None,
        "temperature_scale": 1.0,
        "top_p_scale": 1.0,
        "active_heads": "both",
    }
    assert (
        make_strategy("min-p", min_p=0.2).to_dict()["min_p"] == 0.2
        and "n_sigma" not in make_strategy("min-p").to_dict()
    )


@pytest.mark.parametrize(
    "name, kwargs, needle",
    [
        ("min-p", {"min_p": 1.5}, "--min-p 1.5"),
        ("min-p", {"min_p": -0.1}, "--min-p"),
        ("top-n-sigma", {"n_sigma": -1.0}, "--n-sigma -1"),
        ("top-n-sigma", {"n_sigma": float("inf")}, "--n-sigma"),
        ("edt", {"edt_base": 1.0}, "--edt-base 1"),
        ("edt", {"edt_base": 0.0}, "--edt-base 0"),
        ("edt", {"edt_theta": 0.0}, "--edt-theta 0"),
        ("edt", {"temperature": 0.0}, "--temperature 0"),
        ("min-p", {"top_p": 1.5}, "--top-p"),
        ("static", {"min_p": 0.1}, "--min-p is a setting of --decoding min-p"),
        ("min-p", {"n_sigma": 1.0}, "--n-sigma is a setting of --decoding top-n-sigma"),
        ("autodeco", {"edt_theta": 1.0}, "--edt-theta is a setting of --decoding edt"),
    ],
)
def test_strategy_validation_is_one_line(name, kwargs, needle):
    with pytest.raises(UserError) as caught:
        make_strategy(name, **kwargs)
    line = caught.value.one_line()
    assert needle in line and "\n" not in line


def test_cli_rejects_bad_values_before_loading_a_model(monkeypatch, capsys, tmp_path):
    from autodeco_cli.cli import main

    for args, needle in [
        (["--decoding", "min-p", "--min-p", "2"], "--min-p 2"),
        (["--decoding", "static", "--edt-theta", "1"], "--edt-theta"),
    ]:
        monkeypatch.setattr(sys, "argv", ["autodeco", "generate", "hi", "--model", str(tmp_path / "no-model"), *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        with pytest.raises(SystemExit) as exited:
            main()
        err = capsys.readouterr().err
        assert exited.value.code == 2 and needle in err and "Traceback" not in err


# ---- generation on the tiny model ----------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_lm):
    engine = GenerationEngine(tiny_lm, fresh_heads(TINY_HIDDEN, seed=0))
    yield engine
    engine.close()


ADAPTIVE = [
    make_strategy("min-p", 1.2, min_p=0.1),
    make_strategy("top-n-sigma", 1.5, n_sigma=1.0),
    make_strategy("edt", 1.5, edt_theta=0.5),
]


def _first_logits(lm, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("strategy", ADAPTIVE, ids=lambda s: s.name)
def test_seeded_and_independent_of_batch_mates(engine, tiny_lm, strategy):
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS, strategy, n=2, seed=7)
    together = engine.generate(reqs, max_new_tokens=MAX_NEW, batch_size=len(reqs))
    one_by_one = engine.generate(reqs, max_new_tokens=MAX_NEW, batch_size=1)
    again = engine.generate(list(reversed(reqs)), max_new_tokens=MAX_NEW, batch_size=3)[::-1]
    assert [g.token_ids for g in together] == [g.token_ids for g in one_by_one] == [g.token_ids for g in again]
    other_seed = engine.generate(
        build_requests(tiny_lm.tokenizer, PROMPTS, strategy, n=2, seed=8), max_new_tokens=MAX_NEW
    )
    assert [g.token_ids for g in other_seed] != [g.token_ids for g in together]


def test_extreme_settings_reduce_to_greedy(engine, tiny_lm):
    # min_p = 1 and n = 0 keep only the top token: whatever T, the sample is the argmax path
    greedy = engine.generate(
        build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("greedy")), max_new_tokens=MAX_NEW
    )
    for strategy in (make_strategy("min-p", 3.0, min_p=1.0), make_strategy("top-n-sigma", 3.0, n_sigma=0.0)):
        got = engine.generate(
            build_requests(tiny_lm.tokenizer, PROMPTS, strategy, seed=1), max_new_tokens=MAX_NEW, trace=True
        )
        assert [g.token_ids for g in got] == [g.token_ids for g in greedy], strategy.label
        assert all(t.nucleus_size == 1 for g in got for t in g.trace)


def test_trace_records_the_cut_and_edt_temperature(engine, tiny_lm):
    ids = build_requests(tiny_lm.tokenizer, PROMPTS[:1], make_strategy("greedy"))[0].input_ids
    logits = _first_logits(tiny_lm, ids).unsqueeze(0)
    reqs = [Request(key=s.name, input_ids=ids, strategy=s, seed=3) for s in ADAPTIVE]
    gens = {g.key: g for g in engine.generate(reqs, max_new_tokens=MAX_NEW, trace=True)}
    first_min_p = gens["min-p"].trace[0]
    assert first_min_p.temperature == 1.2 and first_min_p.top_p == 1.0
    assert first_min_p.nucleus_size == int(min_p_keep(torch.softmax(logits / 1.2, -1), 0.1).sum())
    assert gens["top-n-sigma"].trace[0].nucleus_size == int(top_n_sigma_keep(logits, 1.0).sum())
    edt = gens["edt"].trace
    assert edt[0].temperature == pytest.approx(edt_temperature(logits, 1.5, 0.8, 0.5).item(), rel=1e-5)
    assert edt[0].nucleus_size == logits.shape[-1]  # EDT alone cuts nothing
    assert len({round(t.temperature, 6) for t in edt}) > 1 and all(MIN_TEMPERATURE <= t.temperature < 1.5 for t in edt)


def test_requests_differing_only_in_their_own_parameter_do_not_share_a_distribution(engine, tiny_lm):
    ids = build_requests(tiny_lm.tokenizer, PROMPTS[1:2], make_strategy("greedy"))[0].input_ids
    loose, tight = make_strategy("min-p", 1.0, min_p=0.0), make_strategy("min-p", 1.0, min_p=0.5)
    reqs = [Request(key=i, input_ids=ids, strategy=s, seed=5) for i, s in enumerate((loose, tight))]
    together = engine.generate(reqs, max_new_tokens=4, trace=True)
    alone = [engine.generate([r], max_new_tokens=4, trace=True)[0] for r in reqs]
    assert together[0].trace[0].nucleus_size == logits_size(tiny_lm) > together[1].trace[0].nucleus_size
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    edt_a, edt_b = make_strategy("edt", 1.0, edt_theta=0.1), make_strategy("edt", 1.0, edt_theta=2.0)
    reqs = [Request(key=i, input_ids=ids, strategy=s, seed=5) for i, s in enumerate((edt_a, edt_b))]
    a, b = engine.generate(reqs, max_new_tokens=1, trace=True)
    assert a.trace[0].temperature > b.trace[0].temperature  # larger θ: cooler


def logits_size(lm) -> int:
    return lm.model.config.vocab_size


def test_mixed_with_static_and_greedy_in_one_batch(engine, tiny_lm):
    tok = tiny_lm.tokenizer
    base = build_requests(tok, PROMPTS, make_strategy("static", 0.9, 0.95), seed=4)
    strategies = [make_strategy("greedy"), *ADAPTIVE]
    reqs = base + [
        Request(key=(s.name, r.key), input_ids=r.input_ids, strategy=s, seed=r.seed) for s in strategies for r in base
    ]
    mixed = engine.generate(reqs, max_new_tokens=MAX_NEW, batch_size=6)
    alone = [engine.generate([r], max_new_tokens=MAX_NEW)[0] for r in reqs]
    assert [g.token_ids for g in mixed] == [g.token_ids for g in alone]


# ---- grid-search families ------------------------------------------------------------------


def test_min_p_grid_on_the_tiny_model(engine, tmp_path):
    from autodeco_cli.grid.comparison import run_comparison
    from autodeco_cli.grid.families import cell_from_record
    from autodeco_cli.grid.report import grid_table
    from autodeco_cli.grid.search import GridSpec, load_grid, run_grid
    from conftest import FakeTask
    from test_grid import _keys, _samples

    grid = run_grid(
        engine,
        FakeTask(),
        GridSpec(family="min-p", temperatures=[0.7, 1.5], values=[0.1, 0.3], n_boot=300),
        EvalSettings(k=2, seeds=[0], batch_size=3),
        out_dir=tmp_path,
    )
    assert grid["family"] == {"name": "min-p", "axes": {"temperature": "temperature T", "min_p": "min-p"}, "fixed": {}}
    assert grid["temperatures"] == [0.7, 1.5] and grid["min_ps"] == [0.1, 0.3] and "top_ps" not in grid
    slugs = {c["slug"] for c in grid["cells"]}
    assert slugs == {"min-p-T0.7-min-p0.1", "min-p-T0.7-min-p0.3", "min-p-T1.5-min-p0.1", "min-p-T1.5-min-p0.3"}
    assert all(set(c) >= {"temperature", "min_p", "label", "slug"} and "top_p" not in c for c in grid["cells"])
    assert grid["oracle"]["slug"] in slugs and cell_from_record(grid, grid["oracle"]).slug == grid["oracle"]["slug"]
    assert load_grid(tmp_path)["family"]["name"] == "min-p" and (tmp_path / "heatmap.png").stat().st_size > 0
    header = [column.header for column in grid_table(grid).columns]
    assert header[0] == "T \\ min-p" and header[1:] == ["0.1", "0.3"]
    # a cell is exactly `autodeco eval --decoding min-p -t 0.7 --min-p 0.3` with the same settings
    single = tmp_path / "single"
    run_eval(
        engine,
        [FakeTask()],
        [make_strategy("min-p", 0.7, min_p=0.3)],
        EvalSettings(k=2, seeds=[0], batch_size=1),
        out_dir=single,
    )
    cell, alone = _samples(tmp_path, "min-p-T0.7-min-p0.3"), _samples(single, "min-p-T0.7-min-p0.3")
    assert len(cell) == len(alone) == 8
    assert {k: r["text"] for k, r in zip(_keys(cell), cell)} == {k: r["text"] for k, r in zip(_keys(alone), alone)}
    # --then-eval: the oracle row is the family's best cell, read back without regenerating
    comparison = run_comparison(engine, FakeTask(), grid, out_dir=tmp_path, batch_size=4, n_boot=300)
    oracle = next(row for row in comparison["rows"] if row["name"] == "oracle")
    assert oracle["slug"] == grid["oracle"]["slug"] and oracle["min_p"] == grid["oracle"]["min_p"]
    assert "min_p" in (tmp_path / "comparison.md").read_text()


def test_cli_edt_cells_and_family_errors(tiny_model_dir, tmp_path, fake_registry):
    from typer.testing import CliRunner

    from autodeco_cli.cli import app

    runner = CliRunner()
    out = tmp_path / "edt"
    done = runner.invoke(
        app,
        [
            "grid-search",
            "-b",
            "fake",
            "--family",
            "edt",
            "--cells",
            "1.0:0.5,0.7:2",
            "--edt-base",
            "0.9",
            "--model",
            str(tiny_model_dir),
            "-k",
            "2",
            "-o",
            str(out),
        ],
    )
    assert done.exit_code == 0, done.output
    grid = json.loads((out / "grid.json").read_text())
    assert grid["family"]["fixed"] == {"edt_base": 0.9} and grid["family"]["axes"]["edt_theta"] == "θ"
    assert [c["slug"] for c in grid["cells"]] == ["edt-T1-N0.9-theta0.5", "edt-T0.7-N0.9-theta2"]
    assert "θ" in done.output and "T₀" in done.output
    nowhere = ["--model", str(tmp_path / "no-model"), "-o", str(tmp_path / "x")]
    for args, needle in [
        (["--family", "min-p", "--top-ps", "0.9"], "--top-ps is the axis of --family static"),
        (["--family", "edt", "--mode", "expert"], "--mode expert"),
        (["--family", "nucleus"], "--family 'nucleus'"),
        (["--family", "min-p", "--edt-base", "0.8"], "--edt-base"),
        (["--family", "min-p", "--min-ps", "0.1,1.5"], "--min-ps: 1.5"),
        (["--family", "top-n-sigma", "--cells", "1.0"], "T:N_SIGMA"),
    ]:
        bad = runner.invoke(app, ["grid-search", "-b", "fake", *args, *nowhere])
        assert isinstance(bad.exception, UserError), (args, bad.output)
        assert needle in bad.exception.one_line(), (needle, bad.exception.one_line())
