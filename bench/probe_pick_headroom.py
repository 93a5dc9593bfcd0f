"""How much can a question-aware (T, p) at the pick add over one (T, p) shared by every question? (#21)

On rand-times and rand-letter the free choice is the reply's first token, so the heads can beat their
shuffle-across selves (each position given other sequences' values there) only by setting the pick
differently for different questions. This probe bounds what that could be worth. Policy family: sample the
pick at (T, p), decode every later token greedily (the hand-set policy of evals/README.md). Per question it
takes the model's first-token distribution (fp32, the task's raw few-shot prompt) and, for each of its TOP
most likely first tokens, the greedy continuation's score (correct, which option it picked); any other first
token counts as an invalid pick. The expected question score E[exact × (1 − TV)] over k = 8 i.i.d. picks is
then a Monte Carlo sum (DRAWS sets of 8, the same uniforms for every policy of a question), so policies
compare on expected scores, without the sampling noise of a real run.

Rows, each on test questions and paired per question with the single cell:
- single cell: the (T, p) of GRID with the best mean on validation questions;
- per set size: the best cell for each number of stated options (2, 4, 8), chosen on validation;
- by top-1 probability: the best cell for each validation tertile of the model's top-1 first-token
  probability (what the top-p head's max-prob feature sees at T̂ = 1);
- the heads: the shipped heads' own (T̂, P̂) at the pick (`--heads` for others);
- per-question oracle: each test question's best cell (test-tuned: a bound, not a policy).

    AUTODECO_DATA_DIR=../shared/data flock /work/heavy.lock python bench/probe_pick_headroom.py \\
        --tasks rand-times,rand-letter --out runs/pick-headroom

Each task and split is cached in --out (`TASK-SPLIT.npz`); a rerun only re-scores. ~35 minutes for both tasks
(100 validation + 200 test questions each) on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from autodeco_cli.core.cpu_features import cpu_model

TOP, K, DRAWS = 24, 8, 4000
TEMPERATURES = (0.3, 0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0)
TOP_PS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
GRID = [(t, p) for t in TEMPERATURES for p in TOP_PS]


def measure(task_name: str, split: str, limit: int, heads_path: str | None) -> dict[str, np.ndarray]:
    """First-token logits, the greedy continuations' (correct, option index or -1) of the TOP likeliest first
    tokens, the option count and the heads' (T̂, P̂) at the pick, per question."""
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.core.heads import load_heads
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.heads_source import packaged_heads_path
    from autodeco_cli.engine.models import load_base_model
    from autodeco_cli.engine.requests import Request, encode_prompt, request_seed
    from autodeco_cli.tasks import aggregation
    from autodeco_cli.tasks.registry import get_task

    engine = GenerationEngine(load_base_model(dtype="float32"))
    heads = load_heads(heads_path or packaged_heads_path("smollm2-135m-instruct")).float().eval()
    tokenizer, task = engine.tokenizer, get_task(task_name)
    docs = task.load_docs(split, limit=limit)
    logits, firsts, values, requests = [], [], [], []
    with torch.no_grad():
        for d, doc in enumerate(docs):
            ids = encode_prompt(tokenizer, doc.prompt, False)
            out = engine.lm.model(torch.tensor([ids]), output_hidden_states=True)
            last = out.logits[0, -1:].float()
            temperature, top_p = heads(out.hidden_states[-1][0, -1:].float(), last)
            logits.append(last[0])
            values.append((float(temperature), float(top_p)))
            firsts.append(torch.softmax(last[0], -1).topk(TOP).indices.tolist())
            for j, first in enumerate(firsts[-1]):
                requests.append(Request((d, j), ids + [first], make_strategy("greedy"), request_seed(0, d, j)))
    texts = {
        g.key: g.text for g in engine.generate(requests, max_new_tokens=task.max_new_tokens, batch_size=32, stop=["\n"])
    }
    correct, option = np.zeros((len(docs), TOP), bool), np.full((len(docs), TOP), -1)
    for d, doc in enumerate(docs):
        support = aggregation.target_support(task, doc)
        for j, first in enumerate(firsts[d]):
            score = task.score(doc, tokenizer.decode([first]) + texts[d, j])
            correct[d, j] = bool(score.correct)
            option[d, j] = support.index(score.extracted) if score.extracted in support else -1
    sizes = [len(aggregation.target_support(task, doc)) for doc in docs]
    return {
        "logits": torch.stack(logits).numpy(),
        "firsts": np.array(firsts),
        "correct": correct,
        "option": option,
        "options": np.array(sizes),
        "heads": np.array(values),
    }


def pick_probabilities(logits: torch.Tensor, firsts: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The sampler's distribution at (T, p) (`decoding_distribution`), on the TOP first tokens, then everything
    else as one outcome."""
    from autodeco_cli.core.distribution import decoding_distribution

    probs = decoding_distribution(logits.unsqueeze(0), temperature, top_p)[0]
    on_top = probs[torch.as_tensor(firsts)].double().numpy()
    return np.append(on_top, max(0.0, 1.0 - on_top.sum()))


def expected_score(data, d: int, temperature: float, top_p: float, uniforms: np.ndarray) -> float:
    """E[exact × (1 − TV)] of question d over DRAWS sets of K picks (inverse CDF of `uniforms`)."""
    probs = pick_probabilities(torch.as_tensor(data["logits"][d]).float(), data["firsts"][d], temperature, top_p)
    cdf = np.cumsum(probs)
    cdf[-1] = 1.0
    draws = np.searchsorted(cdf, uniforms, side="right").clip(max=len(probs) - 1)
    correct = np.append(data["correct"][d], False)[draws]
    option = np.append(data["option"][d], -1)[draws]
    m = int(data["options"][d])
    # aggregation.total_variation's definition, on all DRAWS sets at once (one call per set: ~10^8 calls a run)
    shares = np.stack([(option == v).mean(1) for v in range(m)], 1)
    tv = 0.5 * (np.abs(shares - 1.0 / m).sum(1) + (option == -1).mean(1))
    return float((correct.mean(1) * (1.0 - tv)).mean())


def score_table(data) -> tuple[np.ndarray, np.ndarray]:
    """[questions, cells] expected scores on GRID, and [questions] at the heads' own values."""
    rng = np.random.default_rng(0)
    grid, heads = [], []
    for d in range(len(data["options"])):
        uniforms = rng.random((DRAWS, K))
        grid.append([expected_score(data, d, t, p, uniforms) for t, p in GRID])
        heads.append(expected_score(data, d, *data["heads"][d], uniforms))
    return np.array(grid), np.array(heads)


def paired(a: np.ndarray, b: np.ndarray) -> str:
    diff = a - b
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    low, high = diff.mean() - 1.96 * se, diff.mean() + 1.96 * se
    verdict = "better" if low > 0 else "worse" if high < 0 else "tied"
    return f"{diff.mean():+.4f} ± {se:.4f} (95% CI {low:+.4f}, {high:+.4f}; {verdict})"


def cell(index: int) -> str:
    return "T {:g} p {:g}".format(*GRID[index])


def report(task: str, validation, test) -> None:
    val_grid, _ = score_table(validation)
    test_grid, test_heads = score_table(test)
    single = int(val_grid.mean(0).argmax())
    base = test_grid[:, single]
    sizes = sorted(set(validation["options"].tolist()))
    by_size = {m: int(val_grid[validation["options"] == m].mean(0).argmax()) for m in sizes}
    sized = np.array([test_grid[i, by_size.get(int(m), single)] for i, m in enumerate(test["options"])])
    top1 = [torch.softmax(torch.as_tensor(x["logits"]).float(), -1).max(-1).values.numpy() for x in (validation, test)]
    edges = np.quantile(top1[0], [1 / 3, 2 / 3])
    bins = [np.digitize(t, edges) for t in top1]
    by_bin = {b: int(val_grid[bins[0] == b].mean(0).argmax()) for b in range(3)}
    binned = np.array([test_grid[i, by_bin[b]] for i, b in enumerate(bins[1])])
    oracle = test_grid.max(1)
    counts = dict(zip(*(v.tolist() for v in np.unique(test["options"], return_counts=True))))
    print(
        f"\n## {task}: {len(validation['options'])} validation questions choose, {len(test['options'])} test "
        f"questions score (options per question: {counts})"
    )
    print("| policy at the pick (greedy after) | chosen on | cells | test E[score] | − single cell |")
    print("|---|---|---|---:|---|")
    print(f"| single cell | validation | {cell(single)} | {base.mean():.4f} | (reference) |")
    cells = ", ".join(f"{m} options: {cell(c)}" for m, c in by_size.items())
    print(f"| per set size | validation | {cells} | {sized.mean():.4f} | {paired(sized, base)} |")
    cells = ", ".join(f"{cell(c)}" for c in by_bin.values()) + f" (edges {edges[0]:.3f}, {edges[1]:.3f})"
    print(f"| by top-1 probability tertile | validation | {cells} | {binned.mean():.4f} | {paired(binned, base)} |")
    t_mean, p_mean = test["heads"].mean(0)
    t_sd, p_sd = test["heads"].std(0)
    cells = f"T̂ {t_mean:.3f} (sd {t_sd:.3f}), P̂ {p_mean:.3f} (sd {p_sd:.3f})"
    print(f"| the heads' own values | training | {cells} | {test_heads.mean():.4f} | {paired(test_heads, base)} |")
    print(
        f"| per-question oracle | **test** (a bound) | each question's best | {oracle.mean():.4f} | "
        f"{paired(oracle, base)} |"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="rand-times,rand-letter")
    parser.add_argument("--validation", type=int, default=100, help="validation questions (choose the cells)")
    parser.add_argument("--test", type=int, default=200, help="test questions (score them)")
    parser.add_argument("--heads", default=None, help="heads folder (default: the shipped heads)")
    parser.add_argument("--out", type=Path, default=Path("runs/pick-headroom"), help="cache folder")
    args = parser.parse_args(argv)
    print(
        f"CPU {cpu_model()} | torch {torch.__version__} | threads {torch.get_num_threads()} | fp32 | "
        f"top {TOP} first tokens | {DRAWS} Monte Carlo sets of k={K} per question and policy"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        data = {}
        for split, limit in (("validation", args.validation), ("test", args.test)):
            heads = "" if args.heads is None else "-" + Path(args.heads).resolve().name
            path = args.out / f"{task}-{split}-{limit}{heads}.npz"
            if not path.exists():
                start = time.time()
                np.savez_compressed(path, **measure(task, split, limit, args.heads))
                print(f"{task} {split}: {limit} questions measured in {time.time() - start:.0f} s", flush=True)
            data[split] = dict(np.load(path))
        report(task, data["validation"], data["test"])


if __name__ == "__main__":
    main()
