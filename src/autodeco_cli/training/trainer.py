"""Training the heads on a frozen base model: single process, or DDP under torchrun/accelerate.

Determinism is by construction rather than by RNG bookkeeping: the epoch order comes from
(seed, epoch), and the easy-token drop draws from (seed, epoch, example). So the same seed gives
the same heads whether the run was interrupted and resumed, or split over several processes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.errors import UserError
from ..core.heads import AutoDecoHeads, HeadsConfig, check_tap_layer, last_state, load_heads
from ..core.io_checks import cut_partial_last_line
from ..engine.models import load_base_model, training_dtype
from ..engine.requests import request_seed
from .checkpoints import CheckpointStore
from .config import TrainConfig
from .data import Example, load_examples
from .hidden_features import Features, HiddenStateCache, base_features
from .losses import head_losses
from .run_folder import launcher_rank, refuse_earlier_run

METRICS_FILE = "metrics.jsonl"
ADAPTER_DIR = "adapter"


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_launcher(cls) -> "Distributed":
        """`run_folder.launcher_rank`: which process writes, known before any model loads."""
        rank, world = launcher_rank()
        return cls(rank=rank, world_size=world)

    @classmethod
    def from_environment(cls, device: torch.device) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        if self.world_size == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


# ---- schedule -------------------------------------------------------------------------------


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return factor


# ---- features: hidden states from the base model, or from the cache ---------------------------


def easy_drop_uniforms(seed: int, epoch: int, examples: list[Example], counts: list[int]) -> torch.Tensor:
    draws = []
    for example, count in zip(examples, counts):
        generator = torch.Generator().manual_seed(request_seed(seed, "easy-drop", epoch, example.index))
        draws.append(torch.rand(count, generator=generator))
    return torch.cat(draws) if draws else torch.zeros(0)


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    generator = torch.Generator().manual_seed(request_seed(seed, "order", epoch))
    return torch.randperm(n, generator=generator).tolist()


def drop_logged_steps_after(path: Path, step: int) -> None:
    """Steps logged after the checkpoint a run resumes from are trained and logged again, so
    their old records go; otherwise metrics.jsonl would list those steps twice."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) == len(lines):
        return
    staging = path.with_name(path.name + ".tmp")
    staging.write_text("".join(kept), encoding="utf-8")
    os.replace(staging, path)  # a kill while rewriting leaves the old log whole


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 0  # not a step record: kept


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    loss_tokens: int
    seconds: float
    final_metrics: dict
    report: dict


class HeadTrainer:
    """torchtune-recipe style: `__init__` only checks the config and knows the paths, so listing
    checkpoints and refusing to overwrite a run (`check_output_dir`) need no model; `setup()` loads
    the model and data and builds the heads and optimizer; then `train()`."""

    def __init__(self, config: TrainConfig, console=None):
        config.validate()
        self.config = config
        self.console = console
        self.output_dir = Path(config.output_dir)
        # the launcher's rank, so a refusal can come before setup(); setup() joins the process group
        self.dist = Distributed.from_launcher()
        self.checkpoints = CheckpointStore(self.output_dir, keep=config.keep_checkpoints)
        self.step = 0
        self.cache: HiddenStateCache | None = None

    def setup(self, lm=None) -> "HeadTrainer":
        """Load the base model (+ LoRA) and the data; build the heads, optimizer and LR schedule.

        `lm` adopts an already loaded model instead (bench/gpu_check.py's random 8B model exists
        only in memory: saving and reloading 16 GB would cost more than the check itself); it must
        already carry any adapter, so `adapter` is refused with it."""
        config = self.config
        if config.threads:
            torch.set_num_threads(config.threads)
        if lm is not None and config.adapter:
            raise ValueError("setup(lm=...) adopts a loaded model as it is: apply the adapter before passing it")
        dtype = training_dtype(config.dtype, config.device)
        self.lm = lm or load_base_model(config.model, device=config.device, dtype=dtype, adapter=config.adapter)
        self.device = self.lm.device
        self.dist = Distributed.from_environment(self.device)
        self.examples, report = load_examples(
            config.data, self.lm.tokenizer, max_length=config.max_length, overlong=config.overlong, limit=config.limit
        )
        self.data_report = asdict(report)
        self.heads = self._init_heads().to(self.device)
        self.lora_model = self._init_lora() if config.lora_r else None
        self.parameters = self._trainable_parameters()
        self.optimizer = self._init_optimizer()
        self.global_batch = config.micro_batch_size * config.gradient_accumulation * self.dist.world_size
        self.steps_per_epoch = math.ceil(len(self.examples) / self.global_batch)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        warmup = int(round(config.warmup_ratio * self.total_steps))
        schedule = lr_lambda(config.schedule, warmup, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        return self

    # -- set-up --

    def _init_heads(self) -> AutoDecoHeads:
        c = self.config
        if c.init_heads:
            heads = load_heads(c.init_heads, expected_hidden_size=self.lm.hidden_size)
            tap = heads.config.tap_layer
            if c.tap_layer is not None and c.tap_layer != tap:
                # the heads' first layers are shaped by what they read: a tap cannot be added or moved later
                reads = f"decoder layer {tap}'s output" if tap else "no tap layer"
                raise UserError(
                    f"tap_layer={c.tap_layer}, but the init_heads {c.init_heads} read {reads}",
                    "leave tap_layer out (it comes with init_heads), or train fresh heads",
                )
            return heads.train()
        torch.manual_seed(c.seed)
        config = HeadsConfig(
            hidden_size=self.lm.hidden_size,
            head_width=c.head_width,
            use_enhanced_features=c.use_enhanced_features,
            base_model=c.model,
            tap_layer=check_tap_layer(c.tap_layer, self.lm.model),
            tap_top_p=c.tap_top_p,
        )
        return AutoDecoHeads(config).train()

    def _init_lora(self):
        from peft import LoraConfig, get_peft_model

        c = self.config
        torch.manual_seed(c.seed + 1)
        lora = LoraConfig(
            r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            target_modules=list(c.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(self.lm.model, lora)
        self.lm.model = peft_model
        return peft_model

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        heads = self.heads
        if self.config.mode == "temperature":
            heads.top_p_head.requires_grad_(False)
        if self.config.mode == "top_p":
            heads.temp_head.requires_grad_(False)
        params = [p for p in heads.parameters() if p.requires_grad]
        if self.lora_model is not None:
            params += [p for p in self.lora_model.parameters() if p.requires_grad]
        return params

    def _init_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        groups = [{"params": [p for p in self.heads.parameters() if p.requires_grad], "lr": c.learning_rate}]
        if self.lora_model is not None:
            groups.append(
                {
                    "params": [p for p in self.lora_model.parameters() if p.requires_grad],
                    "lr": c.lora_learning_rate or c.learning_rate,
                }
            )
        return torch.optim.AdamW(groups, weight_decay=c.weight_decay)

    # -- checkpoints --

    def checkpoint_dirs(self) -> list[Path]:
        return self.checkpoints.folders()

    def check_output_dir(self, resume: bool) -> None:
        """Refuse to train over an earlier run's checkpoints unless resuming (needs no model;
        `train-heads` made the same check before torch was imported)."""
        refuse_earlier_run(self.output_dir, resume)

    def prune_checkpoints(self) -> None:
        """Delete all but the newest `keep_checkpoints` complete checkpoints."""
        self.checkpoints.prune()

    def save_checkpoint(self, extra: dict | None = None, recipe: dict | None = None) -> Path | None:
        """checkpoints/step-N (rank 0 writes). `extra`: the state of a loop run on top of this
        trainer (steering's), restored through `restore_checkpoint`; `recipe`: as in save_heads."""
        if not self.dist.is_main:
            return None
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": asdict(self.config),
            **(extra or {}),
        }
        return self.checkpoints.save(self.step, state, lambda folder: self.save_heads(folder, recipe=recipe))

    def resume(self) -> int:
        """Load the newest checkpoint that reads cleanly; returns the step it was taken at (0 if none).

        A broken one (say a truncated trainer_state.pt) is skipped, with a warning, for the one
        before it; if none is left the error names the broken file.
        """
        self.checkpoints.load_newest(self.restore_checkpoint, self.console)
        return self.step

    def restore_checkpoint(self, folder: Path, state: dict) -> None:
        """The heads, LoRA adapter, optimizer, schedule and step of one checkpoint."""
        self.heads.load_state_dict(load_heads(folder).state_dict())
        if self.lora_model is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(
                self.lora_model, load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])

    def save_heads(self, directory: Path, *, steps: int | None = None, recipe: dict | None = None) -> None:
        """The heads (and LoRA adapter) with their provenance. `steps` defaults to the trainer's
        step count and `recipe` (the fields recorded as the run's config) to its TrainConfig: a run
        with its own loop and fields on top, such as steering, records those instead."""
        recipe = asdict(self.config) if recipe is None else recipe
        self.heads.config.provenance = {
            "trained_with": "autodeco train-heads",
            "config": {k: v for k, v in recipe.items() if k not in ("device", "threads")},
            "data": self.data_report,
            "steps": self.step if steps is None else steps,
        }
        self.heads.save(directory)
        if self.lora_model is not None:
            self.lora_model.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True)

    # -- the loop --

    def _micro_batches(self, epoch: int, step_in_epoch: int) -> list[list[Example]]:
        """This rank's micro-batches for one optimizer step, and how many micro-batches the step has globally."""
        order = epoch_order(self.config.seed, epoch, len(self.examples))
        chunk = order[step_in_epoch * self.global_batch : (step_in_epoch + 1) * self.global_batch]
        size = self.config.micro_batch_size
        global_micro = [chunk[i : i + size] for i in range(0, len(chunk), size)]
        mine = global_micro[self.dist.rank :: self.dist.world_size]
        return [[self.examples[i] for i in micro] for micro in mine], len(global_micro)

    def _features(self, examples: list[Example]) -> Features:
        if self.cache is not None:
            return self.cache.features(examples, self.device)
        return base_features(
            self.lm.model,
            examples,
            self.lm.tokenizer.pad_token_id,
            self.device,
            trainable_base=self.lora_model is not None,
            tap_layer=self.heads.config.tap_layer,
        )

    def _micro_step(self, examples: list[Example], epoch: int, scale: float) -> dict:
        c = self.config
        features = self._features(examples)
        lm_head = self.lm.model.get_output_embeddings()
        with torch.no_grad():
            last = last_state(features.hidden, self.lm.hidden_size)
            logits = lm_head(last.to(lm_head.weight.dtype)).float()
        hidden = features.hidden
        temperature, top_p = self.heads(hidden, logits)
        uniforms = easy_drop_uniforms(c.seed, epoch, examples, features.counts).to(self.device)
        losses = head_losses(
            logits,
            features.targets,
            temperature,
            top_p,
            uniforms,
            mode=c.mode,
            easy_drop_probability=c.easy_drop_probability,
            alpha=c.soft_top_p_alpha,
            dft_weighting=c.dft_weighting,
        )
        (losses["loss"] * scale).backward()
        return {
            **{k: float(v.detach()) for k, v in losses.items()},
            "tokens": int(features.targets.numel()),
            "mean_temperature": float(temperature.detach().mean()),
            "mean_top_p": float(top_p.detach().mean()),
        }

    def _global_sums(self, sums: dict[str, float], micro_batches: int) -> dict[str, float]:
        """Metric sums over every rank, so the log reports the whole step, not rank 0's share."""
        # a fixed key list: a rank without micro-batches has no keys, but must send the same shape
        keys = ["loss", "tokens", "mean_temperature", "mean_top_p"]
        keys += {
            "joint": ["temperature_loss", "top_p_loss"],
            "temperature": ["temperature_loss"],
            "top_p": ["top_p_loss"],
        }[self.config.mode]
        values = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(micro_batches)], dtype=torch.float64)
        self.dist.all_reduce_sum_([values])
        totals = dict(zip(keys, values[:-1].tolist()))
        totals["micro_batches"] = values[-1].item()
        return totals

    def train(self, resume: bool = False, on_step=None) -> TrainResult:
        if not hasattr(self, "lm"):
            raise RuntimeError("HeadTrainer.setup() must run before train()")
        c = self.config
        self.check_output_dir(resume)
        if resume:
            self.resume()
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if c.use_cache:
            self._prepare_cache()
        metrics_path = self.output_dir / METRICS_FILE
        if self.dist.is_main:
            cut_partial_last_line(metrics_path)  # a crash mid-write must not glue the next record onto it
            drop_logged_steps_after(metrics_path, self.step)
        started = time.perf_counter()
        tokens_total = 0
        last: dict = {}
        while self.step < self.total_steps:
            epoch, step_in_epoch = divmod(self.step, self.steps_per_epoch)
            micro_batches, global_count = self._micro_batches(epoch, step_in_epoch)
            self.optimizer.zero_grad(set_to_none=False)
            sums: dict[str, float] = {}
            for examples in micro_batches:
                record = self._micro_step(examples, epoch, scale=1.0 / global_count)
                for key, value in record.items():
                    sums[key] = sums.get(key, 0.0) + value
            for p in self.parameters:
                if p.grad is None:  # a rank with no micro-batch this step still joins the all-reduce
                    p.grad = torch.zeros_like(p)
            self.dist.all_reduce_sum_([p.grad for p in self.parameters])
            sums = self._global_sums(sums, len(micro_batches))
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(self.parameters, c.max_grad_norm)
                if c.max_grad_norm > 0
                else torch.tensor(0.0)
            )
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            step_tokens = int(sums.get("tokens", 0))
            tokens_total += step_tokens
            count = max(sums.pop("micro_batches", 1), 1)
            last = {
                "step": self.step,
                "epoch": epoch,
                "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens": step_tokens,
                "tokens_per_s": tokens_total / max(time.perf_counter() - started, 1e-9),
                **{k: sums[k] / count for k in sums if k != "tokens"},
            }
            if self.dist.is_main and (self.step % c.log_every == 0 or self.step == self.total_steps):
                with metrics_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(last) + "\n")
            if c.save_every and self.step % c.save_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
            if on_step is not None:
                on_step(last, self.total_steps)
        seconds = time.perf_counter() - started
        self.save_checkpoint()
        if self.dist.is_main:
            self.save_heads(self.output_dir)
        self.dist.barrier()
        return TrainResult(self.output_dir, self.step, tokens_total, seconds, last, self.data_report)

    def _prepare_cache(self) -> None:
        c = self.config
        cache_dir = Path(c.cache_dir) if c.cache_dir else self.output_dir / "hidden_cache"
        tap = self.heads.config.tap_layer
        key = HiddenStateCache.key(c, Path(c.data), len(self.examples), self.lm.model.dtype, tap)
        path = cache_dir / f"hidden-{key}.safetensors"
        model, pad_id = self.lm.model, self.lm.tokenizer.pad_token_id
        if self.dist.is_main:
            self.cache = HiddenStateCache.build_or_load(
                path, model, self.examples, pad_id, self.device, c.micro_batch_size, tap_layer=tap
            )
        self.dist.barrier()
        if self.cache is None:
            self.cache = HiddenStateCache.build_or_load(
                path, model, self.examples, pad_id, self.device, c.micro_batch_size, tap_layer=tap
            )


def train_heads_once(recipe_section, data: Path, out: Path, model: str, **fixed) -> Path:
    """MLE heads into `out` for a study (reproduce, where-it-wins): its recipe section's
    key=value fields plus `fixed`; skipped when `out` holds heads, resumed from its checkpoints
    when an earlier run was cut off."""
    from .recipes import as_overrides, build_config

    if not (out / "autodeco_heads.safetensors").is_file():
        config = build_config(
            TrainConfig, None, as_overrides(recipe_section), data=str(data), output_dir=str(out), model=model, **fixed
        )
        trainer = HeadTrainer(config).setup()
        trainer.train(resume=bool(trainer.checkpoint_dirs()))
    return out
