"""The head trainer's settings (`TrainConfig`): every field a recipe or `train-heads` flag can set, checked once."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..core.errors import UserError
from ..engine.model_names import DEFAULT_MODEL


@dataclass
class TrainConfig:
    data: str = ""
    output_dir: str = "runs/heads"
    model: str = DEFAULT_MODEL
    init_heads: str | None = None
    adapter: str | None = None
    mode: str = "joint"  # joint | temperature | top_p
    # Paper defaults (lr 5e-6, 1 epoch, effective batch 32); small-model recipes override them.
    learning_rate: float = 5e-6
    epochs: int = 1
    micro_batch_size: int = 4
    gradient_accumulation: int = 8
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    easy_drop_probability: float = 0.6
    dft_weighting: bool = True  # weight token losses by the frozen model's target probability (paper)
    soft_top_p_alpha: float = 30.0
    head_width: int = 256
    use_enhanced_features: bool = True
    max_length: int = 2048
    overlong: str = "truncate"  # truncate | drop
    limit: int | None = None
    cache_hidden: str = "auto"  # auto (on when epochs > 1 and no LoRA) | on | off
    cache_dir: str | None = None
    save_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_learning_rate: float | None = None
    device: str | None = None
    dtype: str | None = None  # None: fp32 on CPU, bf16 on CUDA (engine.models.training_dtype)
    threads: int | None = None
    max_steps: int | None = None  # stop early (smoke runs, benchmarks)

    def validate(self) -> None:
        if not self.data:
            raise UserError("no training data given", "set data=PATH.jsonl (see `autodeco make-data`)")
        checks = {
            "mode": self.mode in ("joint", "temperature", "top_p"),
            "schedule": self.schedule in ("cosine", "linear", "constant"),
            "cache_hidden": self.cache_hidden in ("auto", "on", "off"),
            "overlong": self.overlong in ("truncate", "drop"),
            "learning_rate": self.learning_rate > 0,
            "epochs": self.epochs >= 1,
            "micro_batch_size": self.micro_batch_size >= 1,
            "gradient_accumulation": self.gradient_accumulation >= 1,
            "easy_drop_probability": 0.0 <= self.easy_drop_probability < 1.0,
            "warmup_ratio": 0.0 <= self.warmup_ratio < 1.0,
            "lora_r": self.lora_r >= 0,
            # 0 means off for save_every, keep all for keep_checkpoints, torch's own count for threads
            "save_every": self.save_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 0,
            "log_every": self.log_every >= 1,
            "max_length": self.max_length >= 1,
            "head_width": self.head_width >= 1,
            "limit": self.limit is None or self.limit >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "threads": self.threads is None or self.threads >= 0,
            "max_grad_norm": self.max_grad_norm >= 0,  # 0: no clipping
            "soft_top_p_alpha": self.soft_top_p_alpha > 0,
            "weight_decay": self.weight_decay >= 0,
            "lora_dropout": 0.0 <= self.lora_dropout < 1.0,
            "lora_learning_rate": self.lora_learning_rate is None or self.lora_learning_rate > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise UserError(
                    f"config field {name}={getattr(self, name)!r} is invalid",
                    "see `autodeco train-heads --help` for allowed values",
                )
        if self.lora_r and self.cache_hidden == "on":
            raise UserError(
                "cache_hidden=on cannot be combined with lora_r: the base model changes while training",
                "set cache_hidden=off",
            )

    @property
    def use_cache(self) -> bool:
        if self.cache_hidden == "auto":
            return self.epochs > 1 and not self.lora_r
        return self.cache_hidden == "on"

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
