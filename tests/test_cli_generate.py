"""`autodeco generate` end to end on the tiny model: outputs, traces, and one-line user errors.

Most cases call the real console entry point `autodeco_cli.cli:main` in-process (fast: no new
interpreter, torch already imported); a few run `python -m autodeco_cli.cli` in a subprocess to
cover the installed entry point, stdin piping and the process exit code for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.requests import build_requests
from conftest import TINY_HIDDEN, build_merged_folder, interrupt_every_engine_after_first_batch, write_jsonl

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TRACE_KEYS = {"token_id", "token", "temperature", "top_p", "nucleus_size"}
BATCH_TRACE_KEYS = TRACE_KEYS | {"sample", "prompt_index", "sample_index"}
RECORD_KEYS = {"prompt_index", "sample", "prompt", "text", "finish_reason", "num_tokens", "decoding"}


def assert_user_error(code: int, err: str, *needles: str):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a single-line error, got:\n{err}"
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def engine_texts(lm, prompts, strategy, max_new_tokens, n=1, seed=0, heads=None):
    engine = GenerationEngine(lm, heads)
    try:
        return engine.generate(
            build_requests(lm.tokenizer, prompts, strategy, n=n, seed=seed), max_new_tokens=max_new_tokens
        )
    finally:
        engine.close()


# ---- successful runs ---------------------------------------------------------------------------


def test_single_prompt_greedy_streams_engine_text(cli, tiny_model_dir, tiny_lm):
    code, out, err = cli("generate", "hello", "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 8)
    assert code == 0, err
    expected = engine_texts(tiny_lm, ["hello"], make_strategy("greedy"), 8)[0].text
    assert out.strip("\n") == expected.strip("\n")


def test_single_prompt_autodeco_with_heads_is_seeded(cli, tiny_model_dir, tiny_heads_dir):
    args = ("generate", "hello", "-m", tiny_model_dir, "--heads", tiny_heads_dir, "--max-new-tokens", 8)
    first = cli(*args, "--seed", 1)
    again = cli(*args, "--seed", 1)
    assert first[0] == 0 and again[0] == 0, first[2]
    assert first[1] == again[1]
    assert "WARNING" not in first[2]


def test_autodeco_default_without_heads_on_absolute_model_path(cli, tiny_model_dir):
    """`autodeco generate -m /abs/model "..."` (default --decoding autodeco, no --heads) must fall
    back to fresh heads with a warning. runtime.packaged_heads_path joins the model spec under
    assets/heads/, and an absolute spec replaces that whole path, so the *model folder itself*
    is taken as the shipped heads folder and loading fails with "no AutoDeco heads inside"."""
    assert tiny_model_dir.is_absolute()
    code, out, err = cli("generate", "hello", "-m", tiny_model_dir, "--max-new-tokens", 4)
    assert code == 0, err
    assert "untrained" in err


def test_merged_folder_uses_its_own_heads(cli, tiny_model_dir, tmp_path):
    from autodeco_cli.core.heads import fresh_heads

    heads = fresh_heads(TINY_HIDDEN, seed=12)
    folder = build_merged_folder(tiny_model_dir, tmp_path / "merged", heads)
    (tmp_path / "split").mkdir()
    heads.save(tmp_path / "split")
    trace_merged, trace_split = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    code, out_merged, err = cli("generate", "hello", "-m", folder, "--max-new-tokens", 6, "--trace-out", trace_merged)
    assert code == 0, err
    assert "untrained" not in err
    code, out_split, err = cli(
        "generate",
        "hello",
        "-m",
        tiny_model_dir,
        "--heads",
        tmp_path / "split",
        "--max-new-tokens",
        6,
        "--trace-out",
        trace_split,
    )
    assert code == 0, err
    assert out_merged == out_split
    a, b = read_jsonl(trace_merged), read_jsonl(trace_split)
    assert [(t["token_id"], t["nucleus_size"]) for t in a] == [(t["token_id"], t["nucleus_size"]) for t in b]
    for x, y in zip(a, b):  # same weights, loaded by two paths: equal up to float rounding
        assert x["temperature"] == pytest.approx(y["temperature"], rel=1e-5)
        assert x["top_p"] == pytest.approx(y["top_p"], rel=1e-5)


def test_file_jsonl_writes_stdout_jsonl(cli, tiny_model_dir, tiny_lm, tmp_path):
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "hello"}, {"messages": [{"role": "user", "content": "What is 27 + 82?"}]}, "The quick brown fox"],
    )
    code, out, err = cli("generate", "-f", prompts, "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 6)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["prompt_index"] for r in rows] == [0, 1, 2]
    assert all(set(r) == RECORD_KEYS for r in rows)
    assert rows[1]["prompt"] == [{"role": "user", "content": "What is 27 + 82?"}]
    expected = engine_texts(
        tiny_lm,
        ["hello", [{"role": "user", "content": "What is 27 + 82?"}], "The quick brown fox"],
        make_strategy("greedy"),
        6,
    )
    assert [r["text"] for r in rows] == [g.text for g in expected]
    assert [r["num_tokens"] for r in rows] == [len(g.token_ids) for g in expected]
    assert all(r["decoding"] == "greedy" for r in rows)


def test_file_txt_one_prompt_per_line(cli, tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n\nThe quick brown fox\nWhat is 27 + 82?\n", encoding="utf-8")
    code, out, err = cli("generate", "--file", prompts, "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 3)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["prompt"] for r in rows] == ["hello", "The quick brown fox", "What is 27 + 82?"]


def test_n_samples_to_output_file_with_trace(cli, tiny_model_dir, tiny_heads_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}, {"prompt": "The quick brown fox"}])
    out_file, trace_file = tmp_path / "out" / "out.jsonl", tmp_path / "trace.jsonl"
    code, out, err = cli(
        "generate", "-f", prompts, "-m", tiny_model_dir, "--heads", tiny_heads_dir,
        "--n", 2, "-o", out_file, "--trace-out", trace_file, "--max-new-tokens", 5, "--seed", 3,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == ""
    rows = read_jsonl(out_file)
    assert [(r["prompt_index"], r["sample"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(set(r) == RECORD_KEYS | {"mean_temperature", "mean_top_p"} for r in rows)
    assert all(0 < r["mean_temperature"] < 2 and 0 < r["mean_top_p"] < 1 for r in rows)
    trace = read_jsonl(trace_file)
    assert all(set(t) == BATCH_TRACE_KEYS for t in trace)
    for index, row in enumerate(rows):
        mine = [t for t in trace if t["sample"] == index]
        assert len(mine) == row["num_tokens"]
        assert all(t["prompt_index"] == row["prompt_index"] and t["sample_index"] == row["sample"] for t in mine)
        assert all(0 < t["temperature"] < 2 and 0 < t["top_p"] < 1 and t["nucleus_size"] >= 1 for t in mine)
        assert abs(sum(t["temperature"] for t in mine) / len(mine) - row["mean_temperature"]) < 1e-6


def test_single_prompt_trace_out_keys_and_plot(cli, tiny_model_dir, tiny_heads_dir, tmp_path):
    trace_file, plot = tmp_path / "t.jsonl", tmp_path / "plots" / "trace.png"
    code, out, err = cli(
        "generate", "hello", "-m", tiny_model_dir, "--heads", tiny_heads_dir,
        "--trace-out", trace_file, "--trace-plot", plot, "--trace", "--max-new-tokens", 6,
    )  # fmt: skip
    assert code == 0, err
    trace = read_jsonl(trace_file)
    assert 1 <= len(trace) <= 6
    assert all(set(t) == TRACE_KEYS for t in trace)
    assert all(isinstance(t["token_id"], int) and isinstance(t["token"], str) for t in trace)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 1000


def test_static_trace_has_fixed_values(cli, tiny_model_dir, tmp_path):
    trace_file = tmp_path / "t.jsonl"
    code, out, err = cli(
        "generate",
        "hello",
        "-m",
        tiny_model_dir,
        "-d",
        "static",
        "-t",
        0.7,
        "-p",
        0.9,
        "--trace-out",
        trace_file,
        "--max-new-tokens",
        4,
    )
    assert code == 0, err
    trace = read_jsonl(trace_file)
    assert all(t["temperature"] == pytest.approx(0.7) and t["top_p"] == pytest.approx(0.9) for t in trace)


def test_stdin_prompt_in_process(cli, tiny_model_dir, tiny_lm):
    code, out, err = cli("generate", "-", "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 5, stdin="hello\n")
    assert code == 0, err
    expected = engine_texts(tiny_lm, ["hello"], make_strategy("greedy"), 5)[0].text
    assert out.strip("\n") == expected.strip("\n")


def _greedy_stop_char(tiny_lm) -> tuple[str, str]:
    """The greedy text for "hello" and a character of it (past the second) to stop at: an ASCII
    letter or digit if there is one, else any visible character (U+FFFD, a lone byte token, is
    not one). The tiny model is seeded, so this is the same text on every run; a text without
    such a character fails here rather than skipping the stop tests."""
    full = engine_texts(tiny_lm, ["hello"], make_strategy("greedy"), 12)[0].text
    visible = [c for c in full[2:] if c.strip() and c != "\ufffd"]
    stop = next((c for c in visible if c.isascii() and c.isalnum()), visible[0] if visible else None)
    assert stop is not None, f"no character to stop at in the tiny model's greedy text {full!r}"
    return full, stop


def test_stop_option_jsonl(cli, tiny_model_dir, tiny_lm, tmp_path):
    full, stop = _greedy_stop_char(tiny_lm)
    prompts = tmp_path / "two.txt"
    prompts.write_text("hello\nhello\n", encoding="utf-8")
    code, out, err = cli(
        "generate", "-f", prompts, "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 12, "--stop", stop
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 2
    for row in rows:
        assert row["text"] == full[: full.index(stop)]
        assert row["finish_reason"] == "stop"


def test_stop_option_single_prompt_stream(cli, tiny_model_dir, tiny_lm):
    """A single prompt is streamed token by token; the printed text should be the same cut text
    as the JSONL output (stop string excluded), not the raw stream up to the stopping token."""
    full, stop = _greedy_stop_char(tiny_lm)
    code, out, err = cli(
        "generate", "hello", "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 12, "--stop", stop
    )
    assert code == 0, err
    assert out.strip("\n") == full[: full.index(stop)]


def test_stdout_jsonl_streams_each_batch_as_it_finishes(cli, tiny_model_dir, tmp_path, monkeypatch):
    """Without -o, a run stopped after its first batch has already printed that batch (stdout
    used to get every line only at the very end)."""
    interrupt_every_engine_after_first_batch(monkeypatch)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\nThe quick brown fox\nWhat is 27 + 82?\n", encoding="utf-8")
    args = ["-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 3, "--batch-size", 1]
    code, out, err = cli("generate", "-f", prompts, *args)
    assert code == 130, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 1 and set(rows[0]) == RECORD_KEYS


def test_empty_raw_prompt_is_refused_before_the_model_loads(cli, tmp_path):
    missing = tmp_path / "no-model"
    code, _, err = cli("generate", "--no-chat", "", "-m", missing)
    assert_user_error(code, err, "the prompt is empty", "--no-chat", "BOS token")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}, {"prompt": ""}])
    code, _, err = cli("generate", "--no-chat", "-f", prompts, "-m", missing)
    assert_user_error(code, err, str(prompts), "prompt_index 1 is empty")


def test_prompt_without_tokens_is_a_user_error(tiny_lm):
    """The engine-level guard (eval and make-data build requests too): no zero-length input."""
    from autodeco_cli.core.errors import UserError

    with pytest.raises(UserError, match="prompt 3 gives no tokens"):
        build_requests(tiny_lm.tokenizer, ["", "x"], make_strategy("greedy"), chat=False, prompt_ids=[3, 4])


# ---- the real entry point in a subprocess --------------------------------------------------------


def run_subprocess(args, stdin: str | None = None, tmp_path=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    if tmp_path is not None:
        env["AUTODECO_CACHE_DIR"] = str(tmp_path / "cache")
    return subprocess.run(
        [sys.executable, "-m", "autodeco_cli.cli", *map(str, args)],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_subprocess_stdin_and_exit_codes(tiny_model_dir, tiny_lm, tmp_path):
    ok = run_subprocess(
        ["generate", "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 5], stdin="hello\n", tmp_path=tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    expected = engine_texts(tiny_lm, ["hello"], make_strategy("greedy"), 5)[0].text
    assert ok.stdout.strip("\n") == expected.strip("\n")
    bad = run_subprocess(["generate", "hi", "-m", tmp_path / "no-such-model"], tmp_path=tmp_path)
    assert_user_error(bad.returncode, bad.stderr, "no-such-model")
    assert bad.stdout == ""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # the terminal closed
        pass


def test_piped_stdout_keeps_its_jsonl_while_the_bar_is_on_a_terminal(tiny_model_dir, tmp_path):
    """With stderr on a terminal, the progress bar swaps sys.stdout for a proxy that prints to
    stderr; the streamed JSONL must still reach the piped stdout, and only it."""
    pty = pytest.importorskip("pty")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\nThe quick brown fox\nWhat is 27 + 82?\n", encoding="utf-8")
    master, terminal = pty.openpty()
    drain = threading.Thread(target=_drain, args=(master,), daemon=True)  # a full terminal would block the bar
    drain.start()
    args = ["generate", "-f", prompts, "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 3, "--batch-size", 1]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "autodeco_cli.cli", *map(str, args)],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120,
            env=dict(os.environ, OMP_NUM_THREADS="1", AUTODECO_CACHE_DIR=str(tmp_path / "cache")),
        )  # fmt: skip
    finally:
        os.close(terminal)
        drain.join(timeout=10)
        os.close(master)
    assert done.returncode == 0
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["prompt_index"] for r in rows) == [0, 1, 2]


# ---- user errors: exit 2, one line, no traceback -------------------------------------------------


def test_missing_model_path(cli, tmp_path):
    code, out, err = cli("generate", "hi", "-m", tmp_path / "missing" / "model")
    assert_user_error(code, err, "missing")


def test_folder_without_config(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = cli("generate", "hi", "-m", tmp_path / "empty")
    assert_user_error(code, err, "config.json")


@pytest.mark.parametrize("content", [b"", b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64, b"not a gguf at all" * 10])
def test_unreadable_gguf(cli, tmp_path, content):
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    code, out, err = cli("generate", "hi", "-m", path)
    assert_user_error(code, err, "x.gguf")


def test_missing_gguf(cli, tmp_path):
    code, out, err = cli("generate", "hi", "-m", tmp_path / "absent.gguf")
    assert_user_error(code, err, "absent.gguf")


def test_heads_of_wrong_hidden_size(cli, tiny_model_dir, wrong_heads_dir):
    code, out, err = cli("generate", "hi", "-m", tiny_model_dir, "--heads", wrong_heads_dir, "--max-new-tokens", 2)
    assert_user_error(code, err, "hidden size", str(TINY_HIDDEN), str(TINY_HIDDEN + 16))


def test_non_safetensors_heads(cli, tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled-heads"
    folder.mkdir()
    from autodeco_cli.core.heads import fresh_heads

    torch.save(fresh_heads(TINY_HIDDEN).state_dict(), folder / "pytorch_model.bin")
    code, out, err = cli("generate", "hi", "-m", tiny_model_dir, "--heads", folder, "--max-new-tokens", 2)
    assert_user_error(code, err, "safetensors")


def test_non_safetensors_model(cli, tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled-model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    torch.save(load_file(str(tiny_model_dir / "model.safetensors")), folder / "pytorch_model.bin")
    code, out, err = cli("generate", "hi", "-m", folder, "-d", "greedy", "--max-new-tokens", 2)
    assert_user_error(code, err, "safetensors")


def test_truncated_model_safetensors(cli, tiny_model_dir, tmp_path):
    """A model folder whose model.safetensors is truncated (an interrupted download) must be a
    one-line user error, not a SafetensorError traceback from inside transformers."""
    folder = tmp_path / "truncated-model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    (folder / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes()[:1000])
    code, out, err = cli("generate", "hi", "-m", folder, "-d", "greedy", "--max-new-tokens", 2)
    assert_user_error(code, err, "truncated-model")


def test_corrupt_merged_autodeco_folder(cli, tmp_path):
    """A folder that looks like a merged AutoDeco checkpoint (autodeco config) but whose
    safetensors file is corrupt: models._has_llm_prefixed_weights opens it unguarded."""
    folder = tmp_path / "merged-corrupt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "autodeco", "base_model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"garbage")
    code, out, err = cli("generate", "hi", "-m", folder, "-d", "greedy", "--max-new-tokens", 2)
    assert_user_error(code, err, "merged-corrupt")


def test_corrupt_heads_safetensors(cli, tiny_model_dir, tmp_path):
    folder = tmp_path / "corrupt-heads"
    folder.mkdir()
    (folder / "autodeco_heads.safetensors").write_bytes(b"\x00" * 7)
    code, out, err = cli("generate", "hi", "-m", tiny_model_dir, "--heads", folder)
    assert_user_error(code, err, "safetensors")


@pytest.mark.parametrize("value", [0, -0.5, 5.5, 100])
def test_temperature_out_of_range(cli, tiny_model_dir, value):
    code, out, err = cli("generate", "hi", "-m", tiny_model_dir, "-d", "static", "-t", value)
    assert_user_error(code, err, "--temperature")


@pytest.mark.parametrize("value", [0, -0.1, 1.01, 2])
def test_top_p_out_of_range(cli, tiny_model_dir, value):
    code, out, err = cli("generate", "hi", "-m", tiny_model_dir, "-d", "static", "-p", value)
    assert_user_error(code, err, "--top-p")


def test_unknown_decoding_and_bad_counts(cli, tiny_model_dir):
    assert_user_error(*cli("generate", "hi", "-m", tiny_model_dir, "-d", "beam")[::2], "beam")
    assert_user_error(*cli("generate", "hi", "-m", tiny_model_dir, "--max-new-tokens", 0)[::2])
    assert_user_error(*cli("generate", "hi", "-m", tiny_model_dir, "--n", 0)[::2])


def test_malformed_jsonl_line_names_file_and_line(cli, tiny_model_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": "broken"\n', encoding="utf-8")
    code, out, err = cli("generate", "-f", path, "-m", tiny_model_dir)
    assert_user_error(code, err, f"{path}:3")


def test_jsonl_line_without_prompt_field(cli, tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "fields.jsonl", [{"prompt": "ok"}, {"question": "no prompt key"}])
    code, out, err = cli("generate", "-f", path, "-m", tiny_model_dir)
    assert_user_error(code, err, f"{path}:2")


def test_missing_prompt_file_and_empty_stdin(cli, tiny_model_dir, tmp_path):
    assert_user_error(*cli("generate", "-f", tmp_path / "nope.jsonl", "-m", tiny_model_dir)[::2], "nope.jsonl")
    assert_user_error(*cli("generate", "-m", tiny_model_dir, stdin="   \n")[::2], "no prompts")
    assert_user_error(*cli("generate", "hi", "-f", tmp_path / "x.txt", "-m", tiny_model_dir)[::2], "not both")
