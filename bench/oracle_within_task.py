"""Heads against the test-tuned static oracle of one task, on a range of question indices.

The oracle is the grid's best static cell on the very questions scored (re-chosen for each
range, so it is an optimistic bound); Δ = heads − oracle is paired per question, with the
bootstrap CI of `autodeco compare`. `--questions FROM:TO` works as in pooled_diagnose.py, so
questions an earlier run already scored can be left out: reports/per-token-confirmation.md.

Usage:
    python bench/oracle_within_task.py rand-times runs/confirm-diagnose/rand-times runs/oracle-grid/rand-times \
        --questions 100:200
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autodeco_cli.evaluation.suite import paired_suite
from pooled_diagnose import question_scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("heads_parent", type=Path, help="folder holding the heads' `autodeco*` run folder")
    parser.add_argument("grid", type=Path, help="a grid-search folder (its static-* cells)")
    parser.add_argument("--questions", default="0:1000000", help="FROM:TO question indices (default all)")
    args = parser.parse_args(argv)
    first, stop = (int(v) for v in args.questions.split(":"))
    heads = question_scores(args.heads_parent, args.task, "autodeco", first, stop)
    cell_names = sorted(p.name for p in args.grid.iterdir() if p.is_dir() and p.name.startswith("static-"))
    cells = {name: question_scores(args.grid, args.task, name, first, stop) for name in cell_names}
    means = {name: sum(v.values()) / len(v) for name, v in cells.items()}
    oracle = max(means, key=means.get)
    c = paired_suite({args.task: heads}, {args.task: cells[oracle]})
    print(
        f"{args.task}, questions [{first}, {stop}), n={len(heads)}: heads {sum(heads.values()) / len(heads):.3f}, "
        f"oracle {oracle} {means[oracle]:.3f} (best of {len(cells)}): Δ {c.delta:+.3f} ± {c.se:.3f} "
        f"(95% CI {c.ci_low:+.3f}, {c.ci_high:+.3f})" + (f", {c.delta / c.se:+.2f} SE" if c.se > 0 else "")
    )
    ranked = sorted(means.items(), key=lambda item: -item[1])
    print("  cells: " + ", ".join(f"{name.removeprefix('static-')} {m:.3f}" for name, m in ranked))


if __name__ == "__main__":
    main()
