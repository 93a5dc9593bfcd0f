"""Instruction-steered decoding: the paper's "emergent control" of T̂/P̂ by plain-language commands.

- `steer_report`: for N questions, the mean T̂/P̂ over each response with no command, with a
  low-diversity command and with a high-diversity command; ΔT̂, ΔP̂ and consistency (the share
  of questions whose mean moves the right way).
- `train_steering`: the paper's targeted training, a few steps on top of trained heads: prompts
  are augmented with commands, and a margin ranking loss pushes T̂/P̂ above the no-command
  baseline for high-diversity commands and below it for low ones, next to the ordinary head
  losses on the plain prompt (so the main task is not forgotten).

The response is held fixed across the three prompts during training (teacher forcing): only
the command differs, so the ranking loss measures exactly the command's effect. The responses
are the records' completions *and* what the model itself answers to the command prompts.

Three choices make the low-diversity direction learnable. Measured on the default model, the
first version (an absolute margin of 0.1 against the current no-command prediction, completions
only) reached 100% T̂ consistency upwards but 68% downwards:
- The baseline is the *starting* heads' no-command prediction (a frozen copy), and an anchor
  loss keeps the no-command prediction there. Against the current prediction, pushing "low"
  down dragged the shared weights, and with them the baseline, down too (T̂ 0.37 -> 0.18).
- The margin is in logit units (of T̂/2 and of P̂), so it means "a clear relative change" at
  any operating point: an absolute 0.1 is a small step at T̂=1 but most of the room at T̂=0.18,
  and P̂ near 1 has no absolute room upwards at all.
- The model's own answers to command prompts join the responses (`command_responses`): the
  remaining failures were questions where the low-diversity command changed the answer itself
  (a 135M model replies "I'm ready to assist..."), text the heads had never been steered on.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.decoding import MAX_TEMPERATURE, make_strategy
from ..core.heads import last_state
from ..core.startup_gc import paused_then_frozen
from ..engine.generation import GenerationEngine
from ..engine.interface import Engine
from ..engine.requests import build_requests, request_seed
from ..tasks.registry import get_task
from .config import SteerConfig, TrainConfig, check_steer_base
from .data import Example, encode_prompt_completion, steer_records
from .hidden_features import Features, frozen_features
from .losses import head_losses
from .run_folder import check_steer_folder
from .trainer import HeadTrainer, easy_drop_uniforms

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
    engine: Engine,
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
        requests = build_requests(
            engine.tokenizer, prompts, strategy, n=1, seed=seed, prompt_ids=[d.doc_id for d in docs]
        )
        generations = engine.generate(
            requests, max_new_tokens=max_new_tokens or task.max_new_tokens, batch_size=batch_size, trace=True
        )
        per_condition[condition] = {g.key[0]: (g.mean_temperature or 0.0, g.mean_top_p or 0.0) for g in generations}
    return summarise_conditions(per_condition)


def summarise_conditions(per_condition: dict[str, dict[str, tuple[float, float]]]) -> SteerReport:
    ids = list(per_condition["none"])
    mean = {c: [sum(per_condition[c][i][k] for i in ids) / len(ids) for k in (0, 1)] for c in CONDITIONS}
    direction = {"low": -1, "high": 1}

    def consistency(k: int) -> dict:
        return {
            c: sum(1 for i in ids if (per_condition[c][i][k] - per_condition["none"][i][k]) * s > 0) / len(ids)
            for c, s in direction.items()
        }

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


def steering_logit(value: torch.Tensor, upper: float) -> torch.Tensor:
    """logit(value / upper): the heads' own pre-sigmoid scale (T̂ = 2σ(z), P̂ = σ(z))."""
    return torch.logit(value / upper, eps=1e-6)


def ranking_loss(reference: torch.Tensor, low: torch.Tensor, high: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge, per token: high-diversity predictions at least `margin` above the reference,
    low-diversity ones at least `margin` below it (all on the logit scale)."""
    reference = reference.detach()
    return (torch.relu(margin - (high - reference)) + torch.relu(margin - (reference - low))).mean()


def anchor_loss(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Keeps the no-command prediction where the starting heads put it (logit scale)."""
    return torch.mean((current - reference.detach()) ** 2)


def command_responses(
    trainer: HeadTrainer, heads, records: list[dict], rng: random.Random, max_new_tokens: int, batch_size: int = 16
) -> list[list[str]]:
    """Per record, what the model itself answers (autodeco decoding with the starting heads) to
    its prompt with one low- and one high-diversity command appended.

    Why: a command can change the *content* of the answer, not only the heads' values. A small
    model often answers "Please answer as certain as possible." with chat ("I'm ready to
    assist..."), a text the plain-prompt training data never shows; the heads then predict that
    content's own (higher) T̂ and the low direction fails on it. Training the ranking on these
    responses too teaches the command's effect on the text that the command really produces.
    """
    engine = GenerationEngine(trainer.lm, heads)
    strategy = make_strategy("autodeco")
    commands = [(rng.choice(LOW_DIVERSITY_COMMANDS), rng.choice(HIGH_DIVERSITY_COMMANDS)) for _ in records]
    answers: dict[tuple[int, int], str] = {}
    try:
        for chat in (True, False):  # chat-form records go through the chat template, raw strings do not
            chosen = [i for i, r in enumerate(records) if isinstance(r["prompt"], str) != chat]
            if not chosen:
                continue
            prompts = [with_command(records[i]["prompt"], commands[i][kind]) for i in chosen for kind in (0, 1)]
            prompt_ids = [(i, kind) for i in chosen for kind in (0, 1)]
            requests = build_requests(
                engine.tokenizer, prompts, strategy, n=1, seed=trainer.config.seed, chat=chat, prompt_ids=prompt_ids
            )
            for generation in engine.generate(requests, max_new_tokens=max_new_tokens, batch_size=batch_size):
                answers[generation.key[0]] = generation.text
    finally:
        engine.close()  # its hook on the output embedding must not outlive generation
    return [[answers[i, 0], answers[i, 1]] for i in range(len(records))]


def _steer_examples(
    trainer: HeadTrainer, records: list[dict], extra_responses: list[list[str]]
) -> list[dict[tuple[int, str], list[Example]]]:
    """Per record and response (0: the record's completion, then its command responses), the
    plain prompt and every command wording, all followed by that same response."""
    tokenizer = trainer.lm.tokenizer

    def encode(index: int, prompt, command: str | None, response: str) -> Example:
        ids, labels = encode_prompt_completion(tokenizer, with_command(prompt, command), response)
        return Example(index, ids, labels)

    variants = []
    for index, (record, extra) in enumerate(zip(records, extra_responses)):
        prompt = record["prompt"]
        by_response = {}
        for r, response in enumerate([record["completion"], *extra]):
            by_response[r, "none"] = [encode(index, prompt, None, response)]
            by_response[r, "low"] = [encode(index, prompt, c, response) for c in LOW_DIVERSITY_COMMANDS]
            by_response[r, "high"] = [encode(index, prompt, c, response) for c in HIGH_DIVERSITY_COMMANDS]
        variants.append(by_response)
    return variants


# Steering revisits a few hundred prompt variants for many steps; their frozen-base states are
# cached in memory up to this size (a 7B model's long traces would not fit, and are recomputed).
STEER_CACHE_BYTES = 2 << 30


class _SteerFeatures:
    """Frozen-base last hidden states per (record, response, condition, wording), computed once
    when they fit in STEER_CACHE_BYTES (cache_hidden=auto), always (on) or never (off)."""

    def __init__(self, trainer: HeadTrainer, variants: list[dict[tuple[int, str], list[Example]]], cache_hidden: str):
        self.trainer = trainer
        loss_tokens = sum(e.num_loss_tokens for v in variants for es in v.values() for e in es)
        size = loss_tokens * trainer.lm.hidden_size * 4
        self.enabled = cache_hidden == "on" or (
            cache_hidden == "auto" and size <= STEER_CACHE_BYTES and not trainer.config.lora_r
        )
        self.stored: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, examples: list[Example], keys: list[tuple]) -> Features:
        trainer = self.trainer
        tap = trainer.heads.config.tap_layer
        if not self.enabled:
            return frozen_features(trainer.lm, examples, trainer.device, tap)
        missing = [i for i, key in enumerate(keys) if key not in self.stored]
        if missing:
            computed = frozen_features(trainer.lm, [examples[i] for i in missing], trainer.device, tap)
            for i, hidden, targets in zip(
                missing, computed.hidden.split(computed.counts), computed.targets.split(computed.counts)
            ):
                self.stored[keys[i]] = (hidden, targets)
        parts = [self.stored[key] for key in keys]
        return Features(torch.cat([h for h, _ in parts]), torch.cat([t for _, t in parts]), [len(t) for _, t in parts])


def train_steering(config: TrainConfig, steer: SteerConfig | None = None, resume: bool = False, console=None) -> Path:
    """A few steps of command-augmented training on top of `config.init_heads`.

    Loss = head losses on the plain prompt + steer.ranking_weight x ranking (T̂ and P̂) +
    steer.anchor_weight x anchor (T̂ and P̂), see the module docstring. Checkpoints are the head
    trainer's (every save_every steps and at the end) with the loop's own RNG and log added, so
    `resume` continues a cut-off run to the heads an uninterrupted one ends with.
    """
    check_steer_base(config)
    steer = steer or SteerConfig()
    steer.validate()
    check_steer_folder(config.output_dir, resume)  # before the model loads
    trainer = HeadTrainer(config)
    with paused_then_frozen():  # the model, the data and the heads: see core/startup_gc
        trainer.setup()
    # the starting heads, before a checkpoint replaces them: the anchor and ranking baseline
    reference_heads = copy.deepcopy(trainer.heads).eval().requires_grad_(False)
    records = steer_records(config.data, config.limit)
    rng = random.Random(config.seed)
    budget = max(len(trainer.lm.tokenizer(r["completion"])["input_ids"]) for r in records) + 16
    if console is not None:
        console.print(
            f"steer: answering {2 * len(records)} command prompts with the starting heads (up to {budget} tokens each)"
        )
    extra = command_responses(
        trainer, reference_heads, records, rng, max_new_tokens=budget, batch_size=config.micro_batch_size
    )
    loop = _SteerLoop(trainer, steer, reference_heads, _steer_examples(trainer, records, extra), rng)
    if resume:
        trainer.checkpoints.load_newest(loop.restore, console)
    steps = config.max_steps or max(1, len(records) // config.micro_batch_size)
    recipe = {**asdict(config), **steer.as_recipe()}
    started = time.perf_counter()
    loop.run(steps, recipe, console)
    output = Path(config.output_dir)
    trainer.save_heads(output, steps=steps, recipe=recipe)
    with (output / "steer_metrics.jsonl").open("w", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(e) + "\n" for e in loop.log))
    if console is not None:
        console.print(f"steered heads written to {output} ({steps} steps, {time.perf_counter() - started:.0f}s)")
    return output


class _SteerLoop:
    """One optimizer step at a time: the head losses on the plain prompt, plus the ranking and
    anchor losses across the three prompts (none, low, high) of one response per record."""

    def __init__(self, trainer: HeadTrainer, steer: SteerConfig, reference_heads, variants, rng: random.Random):
        self.trainer, self.steer, self.reference_heads, self.variants, self.rng = (
            trainer,
            steer,
            reference_heads,
            variants,
            rng,
        )
        self.features_of = _SteerFeatures(trainer, variants, trainer.config.cache_hidden)
        self.responses_per_record = len({response for response, _ in variants[0]})
        self.lm_head = trainer.lm.model.get_output_embeddings()
        self.log: list[dict] = []

    def run(self, steps: int, recipe: dict, console=None) -> None:
        """From the trainer's step (0, or where a checkpoint left off) to `steps`."""
        trainer, save_every = self.trainer, self.trainer.config.save_every
        while trainer.step < steps:
            entry = self.step(trainer.step)
            trainer.step += 1
            self.log.append(entry)
            if console is not None and trainer.step % max(1, steps // 10) == 0:
                console.print(
                    f"steer step {trainer.step}/{steps}: head loss {entry['loss']:.4f}, ranking T "
                    f"{entry['rank_temperature']:.4f}, p {entry['rank_top_p']:.4f}, anchor {entry['anchor']:.4f}"
                )
            if save_every and trainer.step % save_every == 0 and trainer.step < steps:
                self.checkpoint(recipe)
        self.checkpoint(recipe)

    def checkpoint(self, recipe: dict) -> None:
        self.trainer.save_checkpoint({"steer_rng": self.rng.getstate(), "steer_log": self.log}, recipe=recipe)

    def restore(self, folder: Path, state: dict) -> None:
        """The head trainer's checkpoint, then this loop's RNG (responses and wordings) and log."""
        self.trainer.restore_checkpoint(folder, state)
        self.rng.setstate(state["steer_rng"])
        self.log = list(state["steer_log"])

    def predict(self, picks: list[tuple]):
        """picks: (record, response, condition, wording) -> features, logits, T̂, P̂, examples."""
        examples = [self.variants[r][response, condition][w] for r, response, condition, w in picks]
        features = self.features_of(examples, picks)
        with torch.no_grad():
            logits = self.lm_head(last_state(features.hidden, self.trainer.lm.hidden_size)).float()
        temperature, top_p = self.trainer.heads(features.hidden, logits)
        return features, logits, temperature, top_p, examples

    def step(self, step: int) -> dict:
        trainer, config = self.trainer, self.trainer.config
        batch = [(step * config.micro_batch_size + i) % len(self.variants) for i in range(config.micro_batch_size)]
        # the head losses learn from the records' own (scorer-accepted) completions, plain prompt
        features, logits, temperature, top_p, examples = self.predict([(r, 0, "none", 0) for r in batch])
        uniforms = easy_drop_uniforms(config.seed, request_seed(step), examples, features.counts).to(trainer.device)
        losses = head_losses(
            logits,
            features.targets,
            temperature,
            top_p,
            uniforms,
            mode=config.mode,
            easy_drop_probability=config.easy_drop_probability,
            alpha=config.soft_top_p_alpha,
        )
        rank_t, rank_p, anchor = self._command_losses(batch)
        total = losses["loss"] + self.steer.ranking_weight * (rank_t + rank_p) + self.steer.anchor_weight * anchor
        trainer.optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters, config.max_grad_norm)
        trainer.optimizer.step()
        return {
            "step": step + 1,
            "loss": float(losses["loss"].detach()),
            "rank_temperature": float(rank_t.detach()),
            "rank_top_p": float(rank_p.detach()),
            "anchor": float(anchor.detach()),
        }

    def _command_losses(self, batch: list[int]):
        """Ranking (T̂, P̂) and anchor losses, on the logit scale, against the starting heads."""
        # the ranking compares the three prompts on one response, drawn from all of them
        responses = [self.rng.randrange(self.responses_per_record) for _ in batch]
        outputs = {}
        for condition in CONDITIONS:
            picks = [
                (r, response, condition, self.rng.randrange(len(self.variants[r][response, condition])))
                for r, response in zip(batch, responses)
            ]
            outputs[condition] = self.predict(picks)
        features, logits = outputs["none"][0], outputs["none"][1]
        with torch.no_grad():
            reference_t, reference_p = self.reference_heads(features.hidden, logits)
        z = {
            c: (steering_logit(outputs[c][2], MAX_TEMPERATURE), steering_logit(outputs[c][3], 1.0)) for c in CONDITIONS
        }
        z_reference = (steering_logit(reference_t, MAX_TEMPERATURE), steering_logit(reference_p, 1.0))
        margin = self.steer.margin
        rank_t = ranking_loss(z_reference[0], z["low"][0], z["high"][0], margin)
        rank_p = ranking_loss(z_reference[1], z["low"][1], z["high"][1], margin)
        anchor = anchor_loss(z["none"][0], z_reference[0]) + anchor_loss(z["none"][1], z_reference[1])
        return rank_t, rank_p, anchor
