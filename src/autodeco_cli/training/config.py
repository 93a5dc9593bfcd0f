"""The head trainer's settings (`TrainConfig`): every field a recipe or `train-heads` flag can set, checked once;
`--steer`'s own (`SteerConfig`, read from the same recipe through `SteerRecipe`); and `--objective reward`'s
(`RewardConfig`). Torch-free, so that `train-heads` refuses a bad field before torch is imported."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..core.decoding import MAX_TEMPERATURE
from ..core.errors import UserError
from ..engine.model_names import DEFAULT_MODEL

_HELP = "see `autodeco train-heads --help`"


def _refuse_invalid(
    config, checks: dict[str, bool], prefix: str = "", hint: str = _HELP + " for allowed values"
) -> None:
    """One-line error for the first field whose check failed (`prefix`: the field's name in a recipe)."""
    for name, ok in checks.items():
        if not ok:
            raise UserError(f"config field {prefix}{name}={getattr(config, name)!r} is invalid", hint)


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
    tap_layer: int | None = None  # fresh heads also read this decoder layer's output (core/heads.HeadsConfig)
    tap_top_p: bool = True  # False: only the temperature head reads the tap layer
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
            "tap_layer": self.tap_layer is None or self.tap_layer >= 1,
            "limit": self.limit is None or self.limit >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "threads": self.threads is None or self.threads >= 0,
            "max_grad_norm": self.max_grad_norm >= 0,  # 0: no clipping
            "soft_top_p_alpha": self.soft_top_p_alpha > 0,
            "weight_decay": self.weight_decay >= 0,
            "lora_dropout": 0.0 <= self.lora_dropout < 1.0,
            "lora_learning_rate": self.lora_learning_rate is None or self.lora_learning_rate > 0,
        }
        _refuse_invalid(self, checks)
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


def check_steer_base(config: TrainConfig) -> None:
    """`train-heads --steer` starts from trained heads: refused without them before anything loads."""
    if not config.init_heads:
        raise UserError(
            "--steer trains on top of existing heads", "set init_heads=DIR (heads from a normal train-heads run)"
        )


@dataclass
class SteerConfig:
    """`train-heads --steer`'s own fields. Recipes and key=value overrides spell them
    steer_margin, steer_ranking_weight and steer_anchor_weight (see `SteerRecipe`)."""

    margin: float = 1.0  # ranking margin, in logit units of T̂/2 and P̂
    ranking_weight: float = 1.0
    anchor_weight: float = 1.0

    def validate(self) -> None:
        checks = {
            "margin": self.margin > 0,
            "ranking_weight": self.ranking_weight >= 0,
            "anchor_weight": self.anchor_weight >= 0,
        }
        _refuse_invalid(self, checks, prefix="steer_")

    def as_recipe(self) -> dict:
        """The fields under their recipe names."""
        return {f"steer_{name}": value for name, value in asdict(self).items()}


@dataclass
class SteerRecipe(TrainConfig):
    """What `train-heads --steer` reads from one recipe (and its overrides): the training fields
    plus the steer_* ones. Parsing both from one flat recipe keeps the documented keys working."""

    steer_margin: float = SteerConfig.margin
    steer_ranking_weight: float = SteerConfig.ranking_weight
    steer_anchor_weight: float = SteerConfig.anchor_weight

    def split(self) -> tuple[TrainConfig, SteerConfig]:
        values = asdict(self)
        steer = {name: values.pop(f"steer_{name}") for name in SteerConfig.__dataclass_fields__}
        return TrainConfig(**values), SteerConfig(**steer)


@dataclass
class RewardConfig:
    """Fields of `train-heads --objective reward` (a recipe YAML and key=value overrides set them)."""

    tasks: str = ""  # comma list or group of registry tasks with train (and validation) splits
    output_dir: str = "runs/heads-reward"
    model: str = DEFAULT_MODEL
    init_heads: str | None = None  # start from MLE heads (recommended) or fresh heads
    # Restart the top-p head at this P̂ everywhere (its output layer zeroed, bias = logit(P̂)). MLE
    # leaves P̂ ≈ 0.999, deep in the sigmoid's flat tail, where no reward step can move it: the
    # head must start where cutting and not cutting are both a small step away. None keeps it.
    top_p_restart: float | None = None
    # Restart the temperature head the same way, at this T̂ everywhere. From MLE heads the reward
    # must warm a cold pick (adding off-set picks as it goes); from a warm start it cools the exact
    # steps instead, where every wrong sample says "colder". None keeps the head.
    temperature_restart: float | None = None
    top_p_learning_rate: float | None = None  # the top-p head's own rate (default: learning_rate)
    # σ of the cut's exploration (logit space): each sampled token's cut is drawn around P̂ and the top-p
    # head learns from the Gaussian's score function instead of the soft top-p's, whose gradient in P̂
    # is the same for every token inside the nucleus (`core.decoding.explored_top_p`). 0: off.
    top_p_exploration: float = 0.0
    # A price per trained token on T̂ and on P̂ (added to the loss as cost · mean T̂ / P̂). Where a
    # token's value does not change the reward (an exact step that greedy gets right anyway), the
    # policy gradient is zero on average and only noise moves the heads, so T̂ stays warm and P̂ loose
    # there; a small price makes "as greedy and as cut as the reward allows" the default, and the
    # reward holds T̂ up and P̂ open only where spread pays (a free choice).
    temperature_cost: float = 0.0
    top_p_cost: float = 0.0
    mode: str = "joint"  # joint | temperature | top_p: which heads act and learn
    learning_rate: float = 3e-4
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    steps: int = 40
    prompts_per_step: int = 8
    group_size: int = 8
    limit: int | None = None  # train questions per task
    max_new_tokens: int | None = None  # default: each task's own budget
    batch_size: int = 32
    micro_batch_size: int = 32  # sequences per teacher-forced forward
    chat: bool = True  # a task's own `chat` setting wins
    seed: int = 0
    max_grad_norm: float = 1.0
    soft_top_p_alpha: float = 30.0
    head_width: int = 256
    validation_limit: int = 0  # validation questions per task; 0 = no validation, keep the last step
    validation_k: int = 4
    validate_every: int = 10
    keep_checkpoints: int = 2  # newest checkpoints kept (one is taken every validate_every steps); 0 keeps all
    device: str | None = None
    dtype: str | None = None  # None: fp32 on CPU, bf16 on CUDA (engine.models.training_dtype)
    threads: int | None = None

    def validate(self) -> None:
        if not self.tasks:
            raise UserError(
                "no tasks given for --objective reward",
                "set tasks=arith-add,arith-mul (registry tasks with a train split)",
            )
        checks = {
            "mode": self.mode in ("joint", "temperature", "top_p"),
            "schedule": self.schedule in ("cosine", "linear", "constant"),
            "learning_rate": self.learning_rate > 0,
            "steps": self.steps >= 1,
            "prompts_per_step": self.prompts_per_step >= 1,
            "group_size": self.group_size >= 2,
            "batch_size": self.batch_size >= 1,
            "micro_batch_size": self.micro_batch_size >= 1,
            "validation_limit": self.validation_limit >= 0,
            "validation_k": self.validation_k >= 1,
            "validate_every": self.validate_every >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 0,
            "warmup_ratio": 0.0 <= self.warmup_ratio < 1.0,
            "top_p_restart": self.top_p_restart is None or 0.0 < self.top_p_restart < 1.0,
            "temperature_restart": self.temperature_restart is None or 0.0 < self.temperature_restart < MAX_TEMPERATURE,
            "top_p_learning_rate": self.top_p_learning_rate is None or self.top_p_learning_rate > 0,
            "top_p_exploration": 0 <= self.top_p_exploration <= 5
            and not (self.top_p_exploration and self.mode == "temperature"),
            "temperature_cost": self.temperature_cost >= 0,
            "top_p_cost": self.top_p_cost >= 0,
            "limit": self.limit is None or self.limit >= 1,
            "max_new_tokens": self.max_new_tokens is None or self.max_new_tokens >= 1,
            "head_width": self.head_width >= 1,
            "soft_top_p_alpha": self.soft_top_p_alpha > 0,
            "max_grad_norm": self.max_grad_norm >= 0,
            "threads": self.threads is None or self.threads >= 0,
        }
        _refuse_invalid(self, checks, hint="group_size needs >= 2 (the baseline is the group); " + _HELP)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
