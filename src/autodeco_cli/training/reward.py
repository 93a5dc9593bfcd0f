"""Policy-gradient training of the heads against a task's own scorer (`train-heads --objective reward`).

Why a second objective: the paper's loss is maximum likelihood on scorer-accepted samples. It
recovers the sampling distribution of its data (T=0.7 data teaches T̂ near 0.4 on arithmetic,
`reports/where-it-wins.md`), so it cannot learn "be greedier than the data", nor "be exactly as
random as the task asks". Here the heads' per-token (T̂, P̂) *are* the policy, and the reward is
the task's metric:

1. a step takes `prompts_per_step` train questions and samples `group_size` answers to each
   through the engine's own decode loop (autodeco decoding with the current heads);
2. the task scores them; each sample's advantage is its leave-one-out contribution to its
   group's question-level score (`group_advantages`): for pass@1 tasks exactly
   ``correct_i − mean(correct)`` (GRPO's group baseline, without the std division), for
   distributional tasks what the sample adds to exact × (1 − TV) (a correct rare choice is
   worth more than another copy of the favourite);
3. the sampled tokens are teacher-forced through the frozen base, and REINFORCE updates the
   heads only, through the same soft distribution the MLE losses use (`losses.policy_log_probs`).
   With `top_p_exploration` each sampled token's cut is drawn around P̂ instead, and the top-p head
   learns from that Gaussian's score function (`losses.cut_exploration_loss`): through the soft
   top-p alone its gradient is the same for every token inside the nucleus, so it barely moves.

No second sampler: generation is `GenerationEngine.generate`, the math is `losses.py`.
Validation (optional, `validation_limit`) scores held-out questions every `validate_every`
steps, and the output folder holds the best step's heads (`last/` holds the final ones).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..core.decoding import MAX_TEMPERATURE
from ..core.errors import UserError
from ..core.heads import last_state
from ..core.io_checks import cut_partial_last_line
from ..engine.generation import GenerationEngine
from ..engine.requests import Request, encode_prompt, request_seed
from ..tasks.registry import task_chat, task_stop
from .checkpoints import CheckpointStore
from .config import RewardConfig
from .data import IGNORE_INDEX, Example
from .hidden_features import frozen_features
from .losses import cut_exploration_loss, policy_gradient_loss, policy_log_probs
from .reward_splits import require_split
from .run_folder import REWARD_LEGACY_DIR, refuse_earlier_run
from .trainer import epoch_order, lr_lambda

METRICS_FILE = "metrics.jsonl"
LAST_DIR = "last"


# ---- advantages -----------------------------------------------------------------------------


def group_advantages(scores: Sequence[Any], question_metric: Callable[[Sequence[Any]], float]) -> list[float]:
    """Leave-one-out advantages of one question's samples, centred on the group.

    m_i = (k − 1)·(Q(group) − Q(group without i)); A_i = m_i − mean(m). For Q = mean correctness
    this is exactly correct_i − mean(correct); for any Q it credits each sample with its own
    contribution to the question's score.
    """
    k = len(scores)
    if k < 2:
        return [0.0] * k
    full = question_metric(scores)
    marginal = [(k - 1) * (full - question_metric([s for j, s in enumerate(scores) if j != i])) for i in range(k)]
    mean = sum(marginal) / k
    return [m - mean for m in marginal]


def task_question_metric(task: Any, doc: Any) -> Callable[[Sequence[Any]], float]:
    """The task's declared question-level metric over Score objects (pass@1 when it declares none)."""
    from ..tasks.aggregation import question_score

    return lambda scores: question_score(task, doc, scores)


# ---- the trainer ----------------------------------------------------------------------------


@dataclass
class _Question:
    task: Any
    doc: Any
    prompt_ids: list[int]


class RewardTrainer:
    """`__init__` only checks the config; `setup()` loads the model, heads and questions."""

    def __init__(self, config: RewardConfig, reward_fn: Callable | None = None):
        config.validate()
        self.config = config
        self.output_dir = Path(config.output_dir)
        # reward_fn(task, doc, generations) -> (per-sample advantages, question score); the default
        # is the task's own scorer and question metric
        self.reward_fn = reward_fn or self._task_advantages
        # The legacy folder holds the same files and state keys as a step folder but no RNG states,
        # which this trainer can do without: its samples come from generators seeded per request and
        # the heads have no dropout, so it draws nothing from the global RNGs. So an old run resumes
        # from it (as its oldest checkpoint, pruned once newer ones exist) and ends where it would have.
        self.checkpoints = CheckpointStore(self.output_dir, keep=config.keep_checkpoints, legacy=REWARD_LEGACY_DIR)
        self.step = 0
        self.best: float | None = None
        self.initial_validation: float | None = None

    def setup(self, lm=None, tasks: Sequence[Any] | None = None) -> "RewardTrainer":
        """Load (or adopt, for tests) the base model; build the heads, optimizer and questions."""
        from ..engine.models import load_base_model, training_dtype
        from ..evaluation.runner import resolve_tasks

        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        self.lm = lm or load_base_model(c.model, device=c.device, dtype=training_dtype(c.dtype, c.device))
        self.device = self.lm.device
        self.heads = self._init_heads().to(self.device)
        if c.mode == "temperature":
            self.heads.top_p_head.requires_grad_(False)
        if c.mode == "top_p":
            self.heads.temp_head.requires_grad_(False)
        self.parameters = [p for p in self.heads.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), lr=c.learning_rate, weight_decay=0.0)
        warmup = int(round(c.warmup_ratio * c.steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(c.schedule, warmup, c.steps))
        self.tasks = list(tasks) if tasks is not None else resolve_tasks(c.tasks)
        self.train_questions = self._questions("train", c.limit)
        grouped: dict[str, list[_Question]] = {}
        for question in self.train_questions:
            grouped.setdefault(question.task.name, []).append(question)
        self._by_task = list(grouped.values())
        self.validation_questions = self._questions("validation", c.validation_limit) if c.validation_limit else []
        from ..core.decoding import make_strategy

        active = {"joint": "both", "temperature": "temperature", "top_p": "top_p"}[c.mode]
        self.strategy = make_strategy("autodeco", active_heads=active)
        return self

    def _init_heads(self):
        from ..core.heads import AutoDecoHeads, HeadsConfig, load_heads

        c = self.config
        if c.init_heads:
            heads = load_heads(c.init_heads, expected_hidden_size=self.lm.hidden_size)
        else:
            torch.manual_seed(c.seed)
            heads = AutoDecoHeads(
                HeadsConfig(hidden_size=self.lm.hidden_size, head_width=c.head_width, base_model=c.model)
            )
        if c.temperature_restart is not None:
            restart_head(heads.temp_head, c.temperature_restart / MAX_TEMPERATURE)
        if c.top_p_restart is not None:
            restart_head(heads.top_p_head, c.top_p_restart)
        return heads.train()

    def _parameter_groups(self) -> list[dict]:
        c = self.config
        top_p = [p for p in self.heads.top_p_head.parameters() if p.requires_grad]
        temperature = [p for p in self.heads.temp_head.parameters() if p.requires_grad]
        groups = [{"params": temperature}] if temperature else []
        if top_p:
            groups.append({"params": top_p, "lr": c.top_p_learning_rate or c.learning_rate})
        return groups

    def _questions(self, split: str, limit: int | None) -> list[_Question]:
        questions = []
        for task in self.tasks:
            require_split(task, split)
            chat = task_chat(task, self.config.chat)
            for doc in task.load_docs(split=split, limit=limit):
                questions.append(_Question(task, doc, encode_prompt(self.lm.tokenizer, doc.prompt, chat)))
        if not questions:
            raise UserError(f"no {split} questions in {self.config.tasks}")
        return questions

    # -- sampling and advantages --

    def _sample(self, questions: list[_Question], k: int, tag: str, explore: bool = False) -> list[list]:
        """k autodeco samples per question from the current heads, through the engine's loop
        (`explore`: each token's cut drawn around P̂, as training samples; validation does not)."""
        c = self.config
        requests = [
            Request(
                key=(q_index, s),
                input_ids=q.prompt_ids,
                strategy=self.strategy,
                seed=request_seed(c.seed, tag, q.doc.doc_id, s),
                top_p_exploration=c.top_p_exploration if explore else 0.0,
            )
            for q_index, q in enumerate(questions)
            for s in range(k)
        ]
        engine = GenerationEngine(self.lm, self.heads)
        generations = []
        try:
            # one call per task: budgets and stop strings are the task's own
            for task in {id(q.task): q.task for q in questions}.values():
                mine = [r for r in requests if questions[r.key[0]].task is task]
                budget = c.max_new_tokens or task.max_new_tokens
                generations += engine.generate(
                    mine, max_new_tokens=budget, batch_size=c.batch_size, stop=task_stop(task), trace=True
                )
        finally:
            engine.close()  # its hook on the output embedding must not outlive sampling
            self.heads.train()
        groups: list[list] = [[] for _ in questions]
        for generation in generations:
            groups[generation.key[0]].append(generation)
        return groups

    @staticmethod
    def _task_advantages(task, doc, generations) -> tuple[list[float], float]:
        scores = [task.score(doc, g.text) for g in generations]
        metric = task_question_metric(task, doc)
        return group_advantages(scores, metric), metric(scores)

    # -- one update --

    def _examples(self, questions: list[_Question], groups: list[list], advantages: list[list[float]]):
        """The samples with a gradient as teacher-forcing examples, their advantages, and the cut each
        of their tokens was sampled at (from the trace: with exploration it is not P̂)."""
        examples, weights, cuts = [], [], []
        for question, group, group_advantage in zip(questions, groups, advantages):
            for generation, advantage in zip(group, group_advantage):
                if advantage == 0.0 or not generation.token_ids:
                    continue  # no gradient: skip its forward pass
                ids = question.prompt_ids + generation.token_ids
                labels = [IGNORE_INDEX] * len(question.prompt_ids) + generation.token_ids
                examples.append(Example(len(examples), ids, labels))
                weights.append(advantage)
                cuts.append([t.top_p for t in generation.trace])
        return examples, weights, cuts

    def _update(self, examples: list[Example], weights: list[float], cuts: list[list[float]]) -> dict:
        c = self.config
        total_tokens = sum(e.num_loss_tokens for e in examples)
        lm_head = self.lm.model.get_output_embeddings()
        self.optimizer.zero_grad(set_to_none=False)
        loss_sum, temperature_sum = 0.0, 0.0
        for start in range(0, len(examples), c.micro_batch_size):
            batch = examples[start : start + c.micro_batch_size]
            features = frozen_features(self.lm, batch, self.device, self.heads.config.tap_layer)
            with torch.no_grad():
                last = last_state(features.hidden, self.lm.hidden_size)
                logits = lm_head(last.to(lm_head.weight.dtype)).float()
            temperature, top_p = self.heads(features.hidden, logits)
            advantages = torch.tensor(weights[start : start + c.micro_batch_size], device=self.device)
            exploration = torch.zeros((), device=self.device)
            token_top_p = top_p
            if c.top_p_exploration:
                # the tokens' log π at the cuts they were drawn at; P̂ learns from the Gaussian instead
                used = _flat_cuts(cuts[start : start + c.micro_batch_size], features.counts, self.device)
                token_top_p = used.unsqueeze(-1)
                exploration = cut_exploration_loss(top_p, used, c.top_p_exploration, advantages, features.counts)
            log_probs = policy_log_probs(
                logits, features.targets, temperature, token_top_p, mode=c.mode, alpha=c.soft_top_p_alpha
            )
            # one denominator for the whole step, so micro-batches add up to the step's loss
            loss = (
                (policy_gradient_loss(log_probs, advantages, features.counts) + exploration) * sum(features.counts)
                + c.temperature_cost * temperature.sum()
                + c.top_p_cost * top_p.sum()
            ) / max(total_tokens, 1)
            loss.backward()
            loss_sum += float(loss.detach())
            temperature_sum += float(temperature.detach().sum())
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(self.parameters, c.max_grad_norm)
            if c.max_grad_norm > 0
            else torch.tensor(0.0)
        )
        self.optimizer.step()
        return {
            "pg_loss": loss_sum,
            "grad_norm": float(grad_norm),
            "tokens": total_tokens,
            "mean_temperature_forced": temperature_sum / max(total_tokens, 1),
        }

    def _train_question(self, slot: int) -> _Question:
        """The slot-th question drawn: tasks take turns (a 3,850-question task must not drown a
        400-question one), each walking its own questions in a reshuffled order per epoch."""
        by_task = self._by_task
        pool = by_task[slot % len(by_task)]
        index = slot // len(by_task)
        epoch, position = divmod(index, len(pool))
        return pool[epoch_order(self.config.seed + slot % len(by_task), epoch, len(pool))[position]]

    def train_step(self) -> dict:
        c = self.config
        questions = [self._train_question(self.step * c.prompts_per_step + i) for i in range(c.prompts_per_step)]
        groups = self._sample(questions, c.group_size, f"reward-step-{self.step}", explore=True)
        advantages, rewards = [], []
        for question, group in zip(questions, groups):
            group_advantage, reward = self.reward_fn(question.task, question.doc, group)
            advantages.append(group_advantage)
            rewards.append(reward)
        examples, weights, cuts = self._examples(questions, groups, advantages)
        record = {
            "step": self.step + 1,
            "reward": sum(rewards) / len(rewards),
            "lr": self.scheduler.get_last_lr()[0],
            "samples_with_signal": len(examples),
        }
        record["mean_temperature"], record["mean_top_p"] = _trace_means([g for group in groups for g in group])
        if examples:
            record.update(self._update(examples, weights, cuts))
        with warnings.catch_warnings():
            # a step without signal skips optimizer.step(); the schedule still follows the step count
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.step += 1
        return record

    # -- validation, checkpoints, the loop --

    def validation_scores(self) -> dict[str, float]:
        """Mean question-level score on each task's validation questions."""
        c = self.config
        groups = self._sample(self.validation_questions, c.validation_k, "reward-validation")
        per_task: dict[str, list[float]] = {}
        for question, group in zip(self.validation_questions, groups):
            _, score = self.reward_fn(question.task, question.doc, group)
            per_task.setdefault(question.task.name, []).append(score)
        return {name: sum(v) / len(v) for name, v in per_task.items()}

    def _save(self, directory: Path, extra: dict | None = None) -> None:
        self.heads.config.provenance = {
            "trained_with": "autodeco train-heads --objective reward",
            "config": {k: v for k, v in asdict(self.config).items() if k not in ("device", "threads")},
            "steps": self.step,
            **(extra or {}),
        }
        self.heads.save(directory)

    def _checkpoint(self) -> None:
        state = {
            "step": self.step,
            "best": self.best,
            "initial_validation": self.initial_validation,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        self.checkpoints.save(self.step, state, self._save)

    def resume(self) -> int:
        """Load the newest checkpoint that reads cleanly (falling back past broken ones, with a
        warning); returns its step (0 if there is none)."""
        self.checkpoints.load_newest(self._restore)
        return self.step

    def _restore(self, folder: Path, state: dict) -> None:
        from ..core.heads import load_heads

        self.heads.load_state_dict(load_heads(folder).state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best, self.initial_validation = (
            int(state["step"]),
            state["best"],
            state.get("initial_validation"),
        )

    def train(self, resume: bool = False, on_step: Callable[[dict, int], None] | None = None) -> Path:
        c = self.config
        refuse_earlier_run(self.output_dir, resume, REWARD_LEGACY_DIR)
        if resume:
            self.resume()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        cut_partial_last_line(self.output_dir / METRICS_FILE)  # a crash mid-write must not glue the next record onto it
        with (self.output_dir / METRICS_FILE).open("a", encoding="utf-8") as log:
            if self.validation_questions and self.step == 0:
                self._validate_and_keep(log)
            while self.step < c.steps:
                record = self.train_step()
                record["seconds"] = time.perf_counter() - started
                if self.validation_questions and (self.step % c.validate_every == 0 or self.step == c.steps):
                    record["validation"], record["validation_per_task"] = self._validate_and_keep(log, write=False)
                log.write(json.dumps(record) + "\n")
                log.flush()
                if self.step % c.validate_every == 0 or self.step == c.steps:
                    self._checkpoint()
                if on_step is not None:
                    on_step(record, c.steps)
        self._save(self.output_dir / LAST_DIR)
        if not self.validation_questions:
            self._save(self.output_dir)
        return self.output_dir

    def _validate_and_keep(self, log, write: bool = True) -> tuple[float, dict[str, float]]:
        """Score the current heads on validation; the output folder keeps the best step so far.

        Step 0 (the starting heads) is scored and logged but never kept: the folder must hold
        what this objective trained, so that it can be compared with the starting heads.
        """
        per_task = self.validation_scores()
        # the choosing score is the macro mean over tasks: a big task must not drown a small one
        score = sum(per_task.values()) / len(per_task)
        if self.step == 0:
            self.initial_validation = score
        elif self.best is None or score > self.best:
            self.best = score
            self._save(self.output_dir, {"chosen_on": f"validation split, step {self.step}, score {score:.4f}"})
        if write:
            log.write(json.dumps({"step": self.step, "validation": score, "validation_per_task": per_task}) + "\n")
        return score, per_task


def restart_head(head, fraction: float) -> None:
    """Make a head output `fraction` of its range for every input, with live gradients.

    The output layer's weights are zeroed and its bias set to logit(fraction): the hidden layer is
    kept, so the first reward steps can still tell tokens apart through the output weights,
    whose gradient (hidden activations × the sigmoid's slope at `fraction`) is not vanishing.
    """
    output = head.mlp[2]
    with torch.no_grad():
        output.weight.zero_()
        output.bias.fill_(math.log(fraction / (1.0 - fraction)))


def _flat_cuts(cuts: list[list[float]], counts: list[int], device) -> torch.Tensor:
    """The micro-batch's per-token cuts, flat in the order of its labelled positions."""
    if [len(c) for c in cuts] != list(counts):
        raise RuntimeError("a sample's trace does not match its teacher-forced tokens")
    return torch.tensor([p for c in cuts for p in c], dtype=torch.float32, device=device)


def _trace_means(generations: list) -> tuple[float | None, float | None]:
    steps = [t for g in generations for t in (g.trace or [])]
    if not steps:
        return None, None
    return sum(t.temperature for t in steps) / len(steps), sum(t.top_p for t in steps) / len(steps)
