"""Instruction-steered decoding: the paper's "emergent control" of T̂/P̂ by plain-language commands.

- `steer_report`: for N questions, the mean T̂/P̂ over each response with no command, with a
  low-diversity command and with a high-diversity command; ΔT̂, ΔP̂ and consistency (the share
  of questions whose mean moves the right way).
- `train_steering`: the paper's targeted training, a few steps on top of trained heads: prompts
  are augmented with commands, and a margin ranking loss pushes T̂/P̂ above the no-command
  baseline for high-diversity commands and below it for low ones, next to the ordinary head
  losses on the plain prompt (so the main task is not forgotten).

The response is held fixed across the three prompts during training (teacher forcing): only
the command differs, so the ranking loss measures exactly the command's effect.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .benchmarks.registry import get_task
from .decoding import make_strategy
from .generation import GenerationEngine, build_requests, request_seed
from .losses import head_losses
from .training import HeadTrainer, TrainConfig, base_features, easy_drop_uniforms
from .training_data import Example, encode_prompt_completion

LOW_DIVERSITY_COMMANDS = (
    "Please ensure that the diversity of your output is low.",
    "Please answer as certain as possible.",
)
HIGH_DIVERSITY_COMMANDS = (
    "Please make your output more innovative and diverse.",
    "Please be creative and diverse in your answer.",
)
CONDITIONS = ("none", "low", "high")


def with_command(prompt, command: str | None):
    """Append a decoding command to the (last) user message."""
    if command is None:
        return prompt
    if isinstance(prompt, str):
        return f"{prompt}\n{command}"
    messages = [dict(m) for m in prompt]
    for message in reversed(messages):
        if message["role"] == "user":
            message["content"] = f"{message['content']}\n{command}"
            break
    return messages


# ---- report ---------------------------------------------------------------------------------


@dataclass
class SteerReport:
    questions: int
    mean_temperature: dict
    mean_top_p: dict
    delta_temperature: dict
    delta_top_p: dict
    consistency_temperature: dict
    consistency_top_p: dict

    def to_dict(self) -> dict:
        return asdict(self)


def steer_report(
    engine: GenerationEngine,
    task_name: str,
    *,
    n: int = 50,
    split: str = "test",
    offset: int = 0,
    max_new_tokens: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> SteerReport:
    """Mean T̂/P̂ per question under the three conditions, from autodeco generations (one sample each)."""
    task = get_task(task_name)
    docs = task.load_docs(split=split, limit=offset + n)[offset:]
    strategy = make_strategy("autodeco")
    commands = {"none": None, "low": LOW_DIVERSITY_COMMANDS[0], "high": HIGH_DIVERSITY_COMMANDS[0]}
    per_condition: dict[str, dict[str, tuple[float, float]]] = {}
    for condition, command in commands.items():
        prompts = [with_command(d.prompt, command) for d in docs]
        requests = build_requests(engine.tokenizer, prompts, strategy, n=1, seed=seed, prompt_ids=[d.doc_id for d in docs])
        generations = engine.generate(requests, max_new_tokens=max_new_tokens or task.max_new_tokens, batch_size=batch_size, trace=True)
        per_condition[condition] = {g.key[0]: (g.mean_temperature or 0.0, g.mean_top_p or 0.0) for g in generations}
    return summarise_conditions(per_condition)


def summarise_conditions(per_condition: dict[str, dict[str, tuple[float, float]]]) -> SteerReport:
    ids = list(per_condition["none"])
    mean = {c: [sum(per_condition[c][i][k] for i in ids) / len(ids) for k in (0, 1)] for c in CONDITIONS}
    direction = {"low": -1, "high": 1}

    def consistency(k: int) -> dict:
        return {c: sum(1 for i in ids if (per_condition[c][i][k] - per_condition["none"][i][k]) * s > 0) / len(ids) for c, s in direction.items()}

    return SteerReport(
        questions=len(ids),
        mean_temperature={c: mean[c][0] for c in CONDITIONS},
        mean_top_p={c: mean[c][1] for c in CONDITIONS},
        delta_temperature={c: mean[c][0] - mean["none"][0] for c in ("low", "high")},
        delta_top_p={c: mean[c][1] - mean["none"][1] for c in ("low", "high")},
        consistency_temperature=consistency(0),
        consistency_top_p=consistency(1),
    )


# ---- training -------------------------------------------------------------------------------


def ranking_loss(base: torch.Tensor, low: torch.Tensor, high: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge: high-diversity predictions at least `margin` above the (detached) baseline, low ones below."""
    base = base.detach()
    return (torch.relu(margin - (high - base)) + torch.relu(margin - (base - low))).mean()


def _steer_examples(trainer: HeadTrainer, records: list[dict], rng: random.Random) -> list[tuple[Example, Example, Example]]:
    tokenizer = trainer.lm.tokenizer
    triples = []
    for index, record in enumerate(records):
        variants = []
        for command in (None, rng.choice(LOW_DIVERSITY_COMMANDS), rng.choice(HIGH_DIVERSITY_COMMANDS)):
            ids, labels = encode_prompt_completion(tokenizer, with_command(record["prompt"], command), record["completion"])
            variants.append(Example(index, ids, labels))
        triples.append(tuple(variants))
    return triples


def train_steering(config: TrainConfig, resume: bool = False, console=None, margin: float = 0.1, ranking_weight: float = 1.0) -> Path:
    """A few steps of command-augmented training on top of `config.init_heads`."""
    from .errors import UserError

    if not config.init_heads:
        raise UserError("--steer trains on top of existing heads", "set init_heads=DIR (heads from a normal train-heads run)")
    if resume:
        raise UserError("--steer runs are short and do not checkpoint; re-run without --resume")
    trainer = HeadTrainer(config)
    records = [json.loads(line) for line in Path(config.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [r for r in records if "prompt" in r and "completion" in r]
    if config.limit:
        records = records[: config.limit]
    rng = random.Random(config.seed)
    triples = _steer_examples(trainer, records, rng)
    steps = config.max_steps or max(1, len(triples) // config.micro_batch_size)
    device, pad = trainer.device, trainer.lm.tokenizer.pad_token_id
    lm_head = trainer.lm.model.get_output_embeddings()
    started = time.perf_counter()
    log = []
    for step in range(steps):
        batch = [triples[(step * config.micro_batch_size + i) % len(triples)] for i in range(config.micro_batch_size)]
        outputs = {}
        for position, condition in enumerate(CONDITIONS):
            examples = [t[position] for t in batch]
            features = base_features(trainer.lm.model, examples, pad, device, trainable_base=False)
            with torch.no_grad():
                logits = lm_head(features.hidden).float()
            temperature, top_p = trainer.heads(features.hidden, logits)
            outputs[condition] = (features, logits, temperature, top_p, examples)
        features, logits, temperature, top_p, examples = outputs["none"]
        uniforms = easy_drop_uniforms(config.seed, request_seed(step), examples, features.counts).to(device)
        losses = head_losses(logits, features.targets, temperature, top_p, uniforms, mode=config.mode, easy_drop_probability=config.easy_drop_probability, alpha=config.soft_top_p_alpha)
        rank_t = ranking_loss(outputs["none"][2], outputs["low"][2], outputs["high"][2], margin)
        rank_p = ranking_loss(outputs["none"][3], outputs["low"][3], outputs["high"][3], margin)
        total = losses["loss"] + ranking_weight * (rank_t + rank_p)
        trainer.optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters, config.max_grad_norm)
        trainer.optimizer.step()
        entry = {"step": step + 1, "loss": float(losses["loss"].detach()), "rank_temperature": float(rank_t.detach()), "rank_top_p": float(rank_p.detach())}
        log.append(entry)
        if console is not None and (step + 1) % max(1, steps // 10) == 0:
            console.print(f"steer step {step + 1}/{steps}: head loss {entry['loss']:.4f}, ranking T {entry['rank_temperature']:.4f}, p {entry['rank_top_p']:.4f}")
    output = Path(config.output_dir)
    trainer.step = steps
    trainer._save_heads(output)
    with (output / "steer_metrics.jsonl").open("w", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(e) + "\n" for e in log))
    if console is not None:
        console.print(f"steered heads written to {output} ({steps} steps, {time.perf_counter() - started:.0f}s)")
    return output
