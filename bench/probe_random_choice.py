"""Probe for the rand-* tasks: static (T, p=1) cells vs a hand-set per-token policy.

The per-token policy samples the first answer token (the choice) at T_choice with top-p 1 and
decodes the rest greedily: what learned heads could at best do if they only learn "be random at
the choice, exact after it". Scores are the tasks' own question metric, exact × (1 − TV).

    OMP_NUM_THREADS=2 .venv/bin/python bench/probe_random_choice.py --n 30 -k 8 --tasks rand-times,rand-item,rand-letter
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from autodeco_cli.core import stats
from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.models import load_base_model
from autodeco_cli.engine.requests import Request, encode_prompt, request_seed
from autodeco_cli.tasks import aggregation
from autodeco_cli.tasks.registry import get_task


def _first_token_probs(lm, ids: list[int], temperature: float, top_p: float) -> np.ndarray:
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids], device=lm.device)).logits[0, -1].float()
    probs = torch.softmax(logits / temperature, dim=-1).cpu().numpy().astype(float)
    order = np.argsort(-probs)
    # the smallest set of top tokens whose mass reaches top_p (the sampler's nucleus rule)
    keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)]
    out = np.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum()


def per_token_policy(engine, task, docs, k, t_choice, p_choice, max_new):
    """k picks per doc from the first-token distribution at t_choice, each continued greedily."""
    tok, rng = engine.tokenizer, np.random.default_rng(0)
    requests, picks = [], {}
    for d, doc in enumerate(docs):
        ids = encode_prompt(tok, doc.prompt, False)
        probs = _first_token_probs(engine.lm, ids, t_choice, p_choice)
        firsts = rng.choice(len(probs), size=k, p=probs)
        for s, first in enumerate(firsts):
            picks[d, s] = int(first)
            requests.append(Request((d, s), ids + [int(first)], make_strategy("greedy"), request_seed(0, d, s)))
    gens = engine.generate(requests, max_new_tokens=max_new, batch_size=32, stop=["\n"])
    texts = {g.key: tok.decode([picks[g.key]]) + g.text for g in gens}
    return [[task.score(doc, texts[d, s]) for s in range(k)] for d, doc in enumerate(docs)]


def static_cell(engine, task, docs, k, temperature, top_p, max_new):
    strategy = make_strategy("static", temperature=temperature, top_p=top_p)
    tok = engine.tokenizer
    requests = [
        Request((d, s), encode_prompt(tok, doc.prompt, False), strategy, request_seed(0, doc.doc_id, s))
        for d, doc in enumerate(docs)
        for s in range(k)
    ]
    gens = engine.generate(requests, max_new_tokens=max_new, batch_size=32, stop=["\n"])
    texts = {g.key: g.text for g in gens}
    return [[task.score(doc, texts[d, s]) for s in range(k)] for d, doc in enumerate(docs)]


def question_scores(task, docs, table) -> list[float]:
    return [aggregation.question_score(task, doc, scores) for doc, scores in zip(docs, table)]


def summarise(task, docs, table) -> str:
    q = question_scores(task, docs, table)
    exact = np.mean([[s.correct for s in row] for row in table])
    tv = np.mean(
        [
            aggregation.total_variation([s.extracted for s in row], aggregation.target_support(task, doc))
            for doc, row in zip(docs, table)
        ]
    )
    se = np.std(q, ddof=1) / np.sqrt(len(q))
    return f"{100 * np.mean(q):5.1f} ± {100 * se:4.1f} (exact {100 * exact:5.1f}, TV {tv:.2f})"


def _pairs(text: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (item.split(":") for item in text.split(","))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default="rand-times,rand-item,rand-letter")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--split", default="validation", help="validation (choices) or test (a fixed policy's check)")
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--cells", default="0.1:1,0.5:1,1.0:1,1.5:1", help="static T:p cells")
    parser.add_argument(
        "--choice", default="1.0:1,1.0:0.8", help="per-token T:p cells at the choice token (greedy after)"
    )
    parser.add_argument("--out", default=None, help="append per-question scores (JSON lines) here")
    args = parser.parse_args()
    engine = GenerationEngine(load_base_model(dtype="float32"))  # the numbers in evals/README.md are fp32's
    for name_ in args.tasks.split(","):
        task = get_task(name_)
        docs = task.load_docs(args.split, limit=args.n)
        start = time.time()
        print(f"## {name_}: {len(docs)} {args.split} questions × k={args.k}", flush=True)
        static, per_token = {}, {}
        for t, p in _pairs(args.cells):
            table = static_cell(engine, task, docs, args.k, t, p, task.max_new_tokens)
            static[f"static T={t:g} p={p:g}"] = question_scores(task, docs, table)
            print(f"static T={t:g} p={p:g}   {summarise(task, docs, table)}", flush=True)
        for t, p in _pairs(args.choice):
            table = per_token_policy(engine, task, docs, args.k, t, p, task.max_new_tokens)
            per_token[f"per-token T={t:g} p={p:g} @choice"] = question_scores(task, docs, table)
            print(f"per-token T={t:g} p={p:g} @choice, greedy after   {summarise(task, docs, table)}", flush=True)
        best = max(static, key=lambda name: np.mean(static[name]))
        for name, scores in per_token.items():
            c = stats.paired_comparison(scores, static[best], n_boot=10_000, seed=0)
            print(
                f"  {name} − best static ({best}): {100 * c.mean_diff:+.1f} ± {100 * c.se:.1f}, 95% CI "
                f"[{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}]",
                flush=True,
            )
        if args.out:
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(
                    json.dumps({"task": name_, "n": len(docs), "k": args.k, "static": static, "per_token": per_token})
                    + "\n"
                )
        print(f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
