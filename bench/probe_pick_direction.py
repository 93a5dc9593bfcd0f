"""Where does the base model hold "a random pick" apart from "an exact pick"? A probe of hidden states, not a decoding
run (reports/reward-recipe.md, "Round 10").

At the reply's first token (the last prompt position) of validation questions it reads every layer's hidden state
(transformers' hidden_states: 0 the embeddings, k the output of decoder layer k, the last one after the final norm:
what AutoDeco heads read). Two minimal pairs name the distinction: rand-times / first-times ("Pick a random number
from: ..." / "Take the first number from: ...") and rand-letter / initial-word. Per layer:

  transfer   a direction fitted on one pair (the difference of its standardised class means) scores the other
             pair; AUC = the share of (random, exact) question pairs it orders right (0.5: no shared direction;
             near 0: it points the other way)
  families   a direction fitted on both pairs, cut midway between their class means: the share of each other
             family's questions it calls random (rand-list, rand-item, ticket-add pick at random; record-field,
             count-words and arithmetic have one right answer)

and the shipped heads' (T̂, P̂) at that first token, per task. Validation questions only; no test question is read.

    AUTODECO_DATA_DIR=../shared/data flock /work/heavy.lock .venv/bin/python bench/probe_pick_direction.py
"""

from __future__ import annotations

import argparse

import torch

PAIRS = (("rand-times", "first-times"), ("rand-letter", "initial-word"))
OTHERS = ("rand-list", "rand-item", "ticket-add", "record-field", "count-words", "arith-add", "arith-mul")


def first_token_states(lm, heads, name: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[questions, layers + 1, H] states at the last prompt position, and the heads' [questions, 2] (T̂, P̂) there."""
    from autodeco_cli.engine.requests import encode_prompt
    from autodeco_cli.tasks.registry import get_task, task_chat

    task = get_task(name)
    states, values = [], []
    with torch.inference_mode():
        for doc in task.load_docs("validation", limit=limit):
            ids = torch.tensor([encode_prompt(lm.tokenizer, doc.prompt, task_chat(task, True))])
            out = lm.model(ids, output_hidden_states=True)
            states.append(torch.stack([h[0, -1].float() for h in out.hidden_states]))
            values.append(heads.decode_values(out.hidden_states[-1][:, -1].float(), out.logits[:, -1].float())[0])
    return torch.stack(states), torch.stack(values)


def direction(random: torch.Tensor, exact: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, scale, weights): the difference of the two classes' standardised means."""
    both = torch.cat((random, exact))
    mean, scale = both.mean(0), both.std(0) + 1e-6
    return mean, scale, ((random - mean) / scale).mean(0) - ((exact - mean) / scale).mean(0)


def score(x: torch.Tensor, fitted) -> torch.Tensor:
    mean, scale, weights = fitted
    return ((x - mean) / scale) @ weights


def auc(random: torch.Tensor, exact: torch.Tensor) -> float:
    return float((random[:, None] > exact[None, :]).float().mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=60, help="validation questions per task (default 60)")
    args = parser.parse_args(argv)
    from autodeco_cli.core.heads import load_heads
    from autodeco_cli.engine.heads_source import packaged_heads_path
    from autodeco_cli.engine.models import load_base_model

    lm = load_base_model(args.model, dtype="float32")
    heads = load_heads(packaged_heads_path(args.model), expected_hidden_size=lm.hidden_size)
    names = [name for pair in PAIRS for name in pair] + list(OTHERS)
    states, values = {}, {}
    for name in names:
        states[name], values[name] = first_token_states(lm, heads, name, args.limit)
    print(f"{args.model}, fp32, {args.limit} validation questions per task, the reply's first token\n")
    print("| task | shipped heads' T̂ (sd) | P̂ |\n|---|---:|---:|")
    for name in names:
        t, p = values[name][:, 0], values[name][:, 1]
        print(f"| {name} | {t.mean():.2f} ({t.std():.2f}) | {p.mean():.2f} |")
    print("\n| layer | transfer AUC times→letter | letter→times | " + " | ".join(OTHERS) + " |")
    print("|---|---:|---:|" + "---:|" * len(OTHERS))
    for layer in range(states[names[0]].shape[1]):
        at = {name: states[name][:, layer] for name in names}
        transfer = []
        for fit_on, test_on in (PAIRS, PAIRS[::-1]):
            fitted = direction(at[fit_on[0]], at[fit_on[1]])
            transfer.append(auc(score(at[test_on[0]], fitted), score(at[test_on[1]], fitted)))
        random = torch.cat([at[pair[0]] for pair in PAIRS])
        exact = torch.cat([at[pair[1]] for pair in PAIRS])
        fitted = direction(random, exact)
        middle = (score(random, fitted).mean() + score(exact, fitted).mean()) / 2
        shares = [float((score(at[name], fitted) > middle).float().mean()) for name in OTHERS]
        print(f"| {layer} | {transfer[0]:.2f} | {transfer[1]:.2f} | " + " | ".join(f"{s:.2f}" for s in shares) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
