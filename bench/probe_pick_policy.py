"""Probe: the heads' first reply token against the hand-set per-token policy, through `autodeco eval`.

On rand-times and rand-letter the free choice is the first reply token. The hand-set policy of
evals/README.md samples it at (T, p) and decodes every later token greedily. This script runs
`autodeco eval` with one of three policies, so each row gets eval's own sampling, scoring and
request seeds (rows pair per question with any other eval run of the same task, split and seeds):

- ``handset``: the hand-set policy (no heads: run it without --heads, any --decoding);
- ``pick``: the heads' own (T̂, P̂) on every token except the first, which samples at (T, p)
  (``--pick heads:0.8`` keeps the heads' T̂ there and sets only p; ``1:heads`` the other way);
- ``tail``: the heads' own (T̂, P̂) on the first token, every later token greedy.

``pick`` minus the heads says what the heads' values at the choice cost; ``tail`` minus the heads
what their warm tokens after it cost (reports/reward-recipe.md, "Round 6").

    AUTODECO_DATA_DIR=../shared/data python bench/probe_pick_policy.py --policy pick --pick 1:0.8 -- \\
        eval -b rand-letter --split validation --limit 400 -k 8 --seeds 1 --dtype float32 \\
        --heads runs/where-it-wins/heads-reward -o runs/pick-probe/pick/rand-letter

A probe, not a decoding strategy: it replaces `Sampler.distribution` in this process only.
"""

from __future__ import annotations

import argparse
import sys

from autodeco_cli.core.decoding import schedule_strategy
from autodeco_cli.engine import sampler
from autodeco_cli.engine.requests import Schedule

# p this small keeps the nucleus's first token only: the argmax, as greedy decoding picks it
GREEDY_TOP_P = 1e-6


class _EverySample(dict):
    """run_eval's schedules for the hand-set row: the same schedule for every sample."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def get(self, key, default=None):
        return self.schedule


def _patch_handset(temperature: float, top_p: float) -> None:
    from autodeco_cli.commands import common
    from autodeco_cli.evaluation import runner

    strategy = schedule_strategy(f"handset-T{temperature:g}-p{top_p:g}")
    schedules = {strategy: _EverySample(Schedule(((temperature, top_p),), fallback=(1.0, GREEDY_TOP_P)))}
    run_eval = runner.run_eval
    common.DecodingOptions.strategy = lambda self: strategy
    runner.run_eval = lambda *args, **kwargs: run_eval(*args, schedules=schedules, **kwargs)


def _patch_heads(policy: str, temperature: float | None, top_p: float | None) -> None:
    original = sampler.Sampler.distribution
    # one Request per sample; it is kept in the value so its id cannot be reused by a later one
    sampled: dict[int, tuple[object, int]] = {}

    def distribution(self, request, row, head, step=0):
        d = original(self, request, row, head, step)
        if not (request.strategy.uses_heads and head is not None):
            return d
        _, count = sampled.get(id(request), (request, 0))
        sampled[id(request)] = (request, count + 1)
        if policy == "pick" and count == 0:
            return d._replace(
                temperature=d.temperature if temperature is None else temperature,
                top_p=d.top_p if top_p is None else top_p,
            )
        if policy == "tail" and count > 0:
            return d._replace(top_p=GREEDY_TOP_P)
        return d

    sampler.Sampler.distribution = distribution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", choices=("handset", "pick", "tail"), required=True)
    parser.add_argument("--pick", default="1:0.8", help="T:p of the first reply token; 'heads' keeps the heads' value")
    parser.add_argument("eval_args", nargs=argparse.REMAINDER, help="-- then autodeco's arguments (eval ...)")
    args = parser.parse_args()
    temperature, top_p = (None if v == "heads" else float(v) for v in args.pick.split(":"))
    if args.policy == "handset":
        if temperature is None or top_p is None:
            parser.error("--policy handset has no heads: --pick takes two numbers")
        _patch_handset(temperature, top_p)
    else:
        _patch_heads(args.policy, temperature, top_p)
    from autodeco_cli.cli import main as autodeco

    sys.argv = ["autodeco", *[a for a in args.eval_args if a != "--"]]
    autodeco()


if __name__ == "__main__":
    main()
