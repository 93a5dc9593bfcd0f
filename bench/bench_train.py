"""Head-training throughput: an official-style step vs `HeadTrainer`, and the hidden-state cache.

On the default model (SmolLM2-135M-Instruct, GGUF dequantised to fp32) with N GSM8K train
samples ({prompt: [user msg], completion: answer} JSONL written to a temp dir):

(a) official-style: what Zacks917/AutoDeco's HF trainer does per micro-batch, re-written here:
    full-sequence base forward with output_hidden_states (the CausalLM computes logits for every
    position), lm_head applied again under no_grad (as the official forward does), both heads on
    every position (the top-p head's distribution features over the full [B, L, V]), the official
    temperature loss and soft top-p loss on the full [B, L, V] tensors (softmax, sort with
    indices, cumsum, scatter back, renormalise), loss / gradient_accumulation, backward, grad
    clip 1.0, AdamW step. Run with torch.set_flush_denormal(False) (as the official code runs)
    and with True (what our loader turns on), so the report shows where the speed-up comes from.
(b) ours: HeadTrainer, same micro-batches (same order, same padding), same effective batch,
    1 epoch, no hidden-state cache.
(c) cache: 3 epochs recomputing the base forward every epoch (cache_hidden=off) vs 3 epochs
    with cache_hidden=on, twice: once building the cache first (cold), once finding it built
    (warm: the same data and settings again, as a second run or a resumed one would).

Throughput is reported two ways: total tokens of the sequences processed (prompt + completion,
no padding) per second, and loss (completion) tokens per second. The brief's baseline -- "official
trainer ~50 tok/s on 1 thread, 99 on 2 threads, 64 GSM8K samples, 14.5k tokens" -- counts TOTAL
tokens, so compare it with the total-token column.

Variants are interleaved repeat by repeat (min and median reported) because the machine is shared.

Usage:
    python bench/bench_train.py --quick                 # 8 samples, 1 repeat, threads 1,2
    python bench/bench_train.py [--samples 64] [--threads 1,2] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine_limits import machine_line

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="model spec (default: the alias smollm2-135m-instruct)"
    )
    parser.add_argument("--samples", type=int, default=64, help="GSM8K train samples (default 64)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timed repeats per cell (default 1)")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument(
        "--gradient-accumulation", type=int, default=8, help="default 8: effective batch 32, the paper's"
    )
    parser.add_argument("--cache-epochs", type=int, default=3)
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: official-off, official-on, ours, cache"
    )
    parser.add_argument("--quick", action="store_true", help="8 samples, micro-batch 4 x accumulation 2")
    parser.add_argument("--data-dir", default=None, help="default: $AUTODECO_DATA_DIR or ../shared/data")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = min(args.samples, 8)
        args.gradient_accumulation = min(args.gradient_accumulation, 2)
    return args


# ---- data ---------------------------------------------------------------------------------------


def gsm8k_jsonl(data_dir: str | None, samples: int, folder: Path) -> Path:
    root = Path(data_dir or os.environ.get("AUTODECO_DATA_DIR") or REPO.parent / "shared" / "data")
    source = root / "gsm8k" / "train.jsonl"
    if not source.is_file():
        sys.exit(f"GSM8K train split not found at {source} (set --data-dir or AUTODECO_DATA_DIR)")
    rows = []
    with source.open(encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= samples:
                break
            if line.strip():
                item = json.loads(line)
                rows.append({"prompt": [{"role": "user", "content": item["question"]}], "completion": item["answer"]})
    path = folder / f"gsm8k-{samples}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- (a) the official-style step, re-stated here ---------------------------------------------------


def official_temperature_loss(unscaled_logits, temp_logits, labels):
    unscaled_shift = unscaled_logits[:, :-1, :]
    temp_shift = temp_logits[:, :-1, :].clamp_min(1e-2)
    shift_labels = labels[:, 1:]
    valid = shift_labels != -100
    with torch.no_grad():
        base_probs = torch.softmax(unscaled_shift, dim=-1)
        correct = base_probs.argmax(dim=-1) == shift_labels.clamp_min(0)
        drop = (torch.rand(shift_labels.shape) < 0.6) & valid & correct
        keep = valid & ~drop
    scaled = unscaled_shift / temp_shift
    y = shift_labels[keep]
    if y.numel() == 0:
        return torch.tensor(0.0)
    ce = F.cross_entropy(scaled[keep], y, reduction="none")
    weight = torch.softmax(unscaled_shift[keep], dim=-1).gather(1, y.unsqueeze(-1)).squeeze(-1).detach()
    return (ce * weight).mean()


def official_top_p_loss(unscaled_logits, temp_logits, top_p_logits, labels, steepness=30.0):
    unscaled_shift = unscaled_logits[:, :-1, :]
    temp_shift = temp_logits[:, :-1, :]
    top_p_shift = top_p_logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    probs = torch.softmax(unscaled_shift / temp_shift.clamp_min(1e-8), dim=-1)
    sorted_probs, sorted_indices = torch.sort(probs, dim=-1, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    decay = torch.exp(-steepness * torch.relu(cumulative - top_p_shift))
    mask = torch.zeros_like(probs).scatter_(-1, sorted_indices, decay)
    masked = probs * mask
    renorm = masked / (masked.sum(dim=-1, keepdim=True) + 1e-9)
    log_probs = torch.log(renorm + 1e-9)
    valid = shift_labels != -100
    y = shift_labels[valid]
    nll = F.nll_loss(log_probs[valid], y, reduction="none")
    weight = torch.softmax(unscaled_shift[valid], dim=-1).gather(1, y.unsqueeze(-1)).squeeze(-1).detach()
    return (nll * weight).mean()


def official_top_p_head(top_p_head, hidden, temp, unscaled_logits):
    """The official TopPHead.forward: stats of softmax(logits / (T + 1e-8)) over the full vocabulary."""
    probs = torch.softmax(unscaled_logits / (temp + 1e-8), dim=-1)
    stats = torch.cat(
        [
            probs.max(dim=-1, keepdim=True)[0],
            -(probs * torch.log(probs + 1e-8)).sum(dim=-1, keepdim=True),
            probs.var(dim=-1, keepdim=True),
            torch.topk(probs, 5, dim=-1).values.sum(dim=-1, keepdim=True),
        ],
        dim=-1,
    )
    return top_p_head.mlp(torch.cat([hidden, temp, stats], dim=-1))


def pad_batch(examples, pad_id):
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return ids, labels, mask


def official_epoch(model, heads, examples, pad_id, micro, accumulation, seed) -> None:
    """One epoch, official-style, over the same micro-batches (order, padding) as HeadTrainer."""
    from autodeco_cli.training.trainer import epoch_order

    optimizer = torch.optim.AdamW(heads.parameters(), lr=5e-6)
    order = epoch_order(seed, 0, len(examples))
    global_batch = micro * accumulation
    for start in range(0, len(order), global_batch):
        chunk = order[start : start + global_batch]
        micro_batches = [chunk[i : i + micro] for i in range(0, len(chunk), micro)]
        optimizer.zero_grad(set_to_none=True)
        for indices in micro_batches:
            ids, labels, mask = pad_batch([examples[i] for i in indices], pad_id)
            outputs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = outputs.hidden_states[-1]
            with torch.no_grad():
                unscaled = model.lm_head(hidden)
            temp = heads.temp_head(hidden)
            top_p = official_top_p_head(heads.top_p_head, hidden, temp.detach(), unscaled)
            loss = official_temperature_loss(unscaled, temp, labels) + official_top_p_loss(
                unscaled, temp, top_p, labels
            )
            (loss / len(micro_batches)).backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        optimizer.step()


# ---- runs ------------------------------------------------------------------------------------------


class Clock:
    """Wall seconds and this process's CPU seconds (all threads) of a block.

    On a shared machine wall time depends on the other jobs; at 1 thread the CPU time is close to
    what the wall time would be on an idle core, so both are reported.
    """

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_official(lm, examples, args, flush: bool) -> Clock:
    from autodeco_cli.core.heads import AutoDecoHeads, HeadsConfig

    torch.manual_seed(args.seed)
    heads = AutoDecoHeads(HeadsConfig(hidden_size=lm.hidden_size)).train()
    torch.set_flush_denormal(flush)
    try:
        with Clock() as clock:
            official_epoch(
                lm.model,
                heads,
                examples,
                lm.tokenizer.pad_token_id,
                args.micro_batch_size,
                args.gradient_accumulation,
                args.seed,
            )
        return clock
    finally:
        torch.set_flush_denormal(True)  # back to what load_base_model set


def make_trainer(args, data: Path, out: Path, threads: int, **fields):
    from autodeco_cli.training.config import TrainConfig
    from autodeco_cli.training.trainer import HeadTrainer

    cfg = TrainConfig(
        data=str(data),
        output_dir=str(out),
        model=args.model,
        micro_batch_size=args.micro_batch_size,
        gradient_accumulation=args.gradient_accumulation,
        seed=args.seed,
        threads=threads,
        **fields,
    )
    return HeadTrainer(cfg).setup()


def time_ours(args, data: Path, work: Path, threads: int, tag: str, **fields) -> tuple[Clock, object]:
    trainer = make_trainer(args, data, work / tag, threads, **fields)  # model loading is not timed
    torch.set_flush_denormal(True)
    with Clock() as clock:
        result = trainer.train()
    del trainer
    return clock, result


def summary(clocks: list[Clock]) -> dict:
    wall, cpu = [c.wall for c in clocks], [c.cpu for c in clocks]
    return {
        "wall_min": min(wall),
        "wall_median": statistics.median(wall),
        "cpu_min": min(cpu),
        "cpu_median": statistics.median(cpu),
        "wall": wall,
        "cpu": cpu,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine_line(), flush=True)  # gains differ between CPUs: every run names its machine
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from autodeco_cli.engine.models import load_base_model
    from autodeco_cli.training.data import load_examples

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    threads_list = [int(t) for t in args.threads.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = gsm8k_jsonl(args.data_dir, args.samples, work)
    lm = load_base_model(args.model, device="cpu", dtype="float32")  # training's base dtype on CPU, as the official
    lm.model.requires_grad_(False)
    examples, report = load_examples(data, lm.tokenizer)
    total_tokens, loss_tokens = report.total_tokens, report.loss_tokens
    steps = -(-len(examples) // (args.micro_batch_size * args.gradient_accumulation))
    print(
        f"model {args.model}; {len(examples)} GSM8K samples: {total_tokens:,} total tokens, {loss_tokens:,} loss "
        "tokens; "
        f"micro-batch {args.micro_batch_size} x accumulation {args.gradient_accumulation} ({steps} optimizer "
        "steps/epoch); "
        f"repeats {args.repeats}; torch {torch.__version__}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict = {
        "config": {**vars(args), "total_tokens": total_tokens, "loss_tokens": loss_tokens, "examples": len(examples)},
        "threads": {},
    }
    run_id = 0
    for threads in threads_list:
        torch.set_num_threads(threads)
        clocks: dict[str, list[Clock]] = {}
        for repeat in range(args.repeats):
            cells = ["official-off", "official-on", "ours", "cache"]
            if repeat % 2:
                cells.reverse()  # alternate the order so drift hits all cells alike
            for name in cells:
                if name in skip:
                    continue
                run_id += 1
                if name in ("official-off", "official-on"):
                    new = {name: time_official(lm, examples, args, flush=name == "official-on")}
                elif name == "ours":
                    clock, result = time_ours(args, data, work, threads, f"ours-{run_id}", epochs=1, cache_hidden="off")
                    assert result.loss_tokens == loss_tokens, (result.loss_tokens, loss_tokens)
                    new = {name: clock}
                else:
                    cache_dir = str(work / f"cache-{run_id}")
                    on, _ = time_ours(
                        args,
                        data,
                        work,
                        threads,
                        f"cache-on-{run_id}",
                        epochs=args.cache_epochs,
                        cache_hidden="on",
                        cache_dir=cache_dir,
                    )
                    # same data and settings: this run finds the cache `on` built and only reads it
                    warm, _ = time_ours(
                        args,
                        data,
                        work,
                        threads,
                        f"cache-warm-{run_id}",
                        epochs=args.cache_epochs,
                        cache_hidden="on",
                        cache_dir=cache_dir,
                    )
                    off, _ = time_ours(
                        args, data, work, threads, f"cache-off-{run_id}", epochs=args.cache_epochs, cache_hidden="off"
                    )
                    new = {"cache-on": on, "cache-warm": warm, "cache-off": off}
                torch.set_num_threads(threads)
                for key, clock in new.items():
                    clocks.setdefault(key, []).append(clock)
                    print(
                        f"  [threads {threads}, repeat {repeat + 1}] {key}: {clock.wall:.1f} s wall, {clock.cpu:.1f} s "
                        f"CPU (load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
        cell = {name: summary(values) for name, values in clocks.items()}
        print(f"\nthreads={threads}   (tok/s from the min over repeats; 'CPU' = process CPU seconds)")
        print(
            f"  {'path':<36} {'wall s':>8} {'CPU s':>8} {'total tok/s':>12} {'loss tok/s':>11} {'total tok/CPU-s':>16}"
        )
        rows = [
            ("official-off", "official-style, flush-denormal off"),
            ("official-on", "official-style, flush-denormal on"),
            ("ours", "ours (HeadTrainer, no cache)"),
        ]
        for key, label in rows:
            if key in cell:
                c = cell[key]
                c.update(
                    total_tokens_per_s=total_tokens / c["wall_min"],
                    loss_tokens_per_s=loss_tokens / c["wall_min"],
                    total_tokens_per_cpu_s=total_tokens / c["cpu_min"],
                )
                print(
                    f"  {label:<36} {c['wall_min']:8.1f} {c['cpu_min']:8.1f} {c['total_tokens_per_s']:12.1f} "
                    f"{c['loss_tokens_per_s']:11.1f} {c['total_tokens_per_cpu_s']:16.1f}"
                )
        if "ours" in cell:
            for key in ("official-off", "official-on"):
                if key in cell:
                    wall = cell[key]["wall_min"] / cell["ours"]["wall_min"]
                    cpu = cell[key]["cpu_min"] / cell["ours"]["cpu_min"]
                    cell[f"speedup_vs_{key}"] = {"wall": wall, "cpu": cpu}
                    print(f"  speed-up ours vs {key}: {wall:.2f}x wall, {cpu:.2f}x CPU   (target >= 2x)")
        if "cache-on" in cell:
            wall = cell["cache-on"]["wall_min"] / cell["cache-off"]["wall_min"]
            cpu = cell["cache-on"]["cpu_min"] / cell["cache-off"]["cpu_min"]
            cell["cache_ratio"] = {"wall": wall, "cpu": cpu}
            warm_wall = cell["cache-warm"]["wall_min"] / cell["cache-off"]["wall_min"]
            warm_cpu = cell["cache-warm"]["cpu_min"] / cell["cache-off"]["cpu_min"]
            cell["cache_ratio_prebuilt"] = {"wall": warm_wall, "cpu": warm_cpu}
            print(
                f"  cache, {args.cache_epochs} epochs from a built cache: {cell['cache-warm']['wall_min']:.1f} s vs "
                f"recomputing {cell['cache-off']['wall_min']:.1f} s wall "
                f"-> ratio {warm_wall:.2f} wall, {warm_cpu:.2f} CPU   (target <= 0.5)\n"
                f"  cache, {args.cache_epochs} epochs incl. building it: {cell['cache-on']['wall_min']:.1f} s -> ratio "
                f"{wall:.2f} wall, {cpu:.2f} CPU"
            )
        print(flush=True)
        results["threads"][threads] = cell
    print(
        "note: the brief's baseline (official trainer ~50 tok/s at 1 thread, 99 at 2, 64 samples, 14.5k tokens) counts "
        "TOTAL tokens."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
