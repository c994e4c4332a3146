"""Every training knob in one dataclass: `TrainConfig`.

It holds the model's own config (``cfg.model``, a `model.lm.ModelConfig` of the architecture named by
its ``arch`` field, `model.arch`), the stage's settings (``cfg.stage``, the stage's
`train.options.StageOptions`: a pretraining run's config holds no preference-loss field) and the
training fields every stage shares. Where the values come from is `train.presets` (a size, the stage's
overlay, a recipe) and `train.overrides` (``--set key=value``); which fields the command line set
travels with the config (`TrainConfig.set_fields`): a fine-tune or a resumed run takes the model's
function from the model it continues unless the user set a field (`train.inherit`), and says what changed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields

from common.recipes import DEFAULT_RECIPE
from model.archs import config_from_dict, get
from model.archs.gpt2 import GPTConfig
from model.lm import ModelConfig
from model.runtime import DTYPES
from train import stages
from train.options import StageOptions

AUTO = "auto"  # micro_batch_size=auto: the largest that fits, chosen at run start (train.plan.resolve_micro_batch)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=GPTConfig)  # vocab_size is replaced by the data's at run time
    stage: StageOptions = field(default_factory=lambda: stages.get("pretrain").option_class()())  # the stage's own
    # batch: sequences per optimizer step over all ranks, and per forward pass on one rank
    batch_size: int = 256
    micro_batch_size: int | str = 32  # or AUTO
    # optimizer and schedule (linear warmup, then cosine from lr down to lr * min_lr_ratio at max_steps)
    max_steps: int = 5000
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # adamw (the seed's) or muon: Muon on the hidden matrices at muon_lr, AdamW at lr on the rest (train.optim);
    # Keller Jordan's Muon defaults
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    # evaluation, logging, checkpoints
    eval_every: int = 250
    eval_blocks: int = 64  # fixed validation blocks per eval
    sample_prompt: str = "数学是"  # pretraining: text to continue; SFT: a user message (ChatML-wrapped)
    sample_tokens: int = 32  # 0: no sample at evals
    log_every: int = 1
    ckpt_every: int = 500
    # runtime (names: model.runtime)
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 where supported, else fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    compile: str = "auto"  # auto (on for CUDA) | on | off
    # the recipe laid over the preset (common.recipes); recorded, chosen by --recipe (never by --set)
    recipe: str = DEFAULT_RECIPE
    # the fields given on the command line (plain options or --set), in the order given
    set_fields: tuple[str, ...] = ()

    def accumulation(self, world_size: int) -> int:
        """Micro-steps per optimizer step on each rank: batch_size = micro_batch_size x accumulation x ranks."""
        if self.micro_batch_size == AUTO:
            raise ValueError("micro_batch_size=auto is chosen at run start (train.plan.resolve_micro_batch)")
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size} "
                f"x {world_size} process(es); change --set batch_size=... or micro_batch_size=..."
            )
        return self.batch_size // per_step

    def fit_to_ranks(self, world_size: int) -> tuple[TrainConfig, str | None]:
        """This config with a micro-batch that splits the batch over `world_size` ranks, and a note if it
        changed. The effective batch (and so the results) stays the same; only a micro-batch the user
        set explicitly is never changed (a wrong one is an error naming it)."""
        if self.batch_size % (self.micro_batch_size * world_size) == 0 or "micro_batch_size" in self.set_fields:
            self.accumulation(world_size)  # raises with the fields to change
            return self, None
        fits = [m for m in range(self.micro_batch_size, 0, -1) if self.batch_size % (m * world_size) == 0]
        if not fits:
            raise ValueError(f"batch_size {self.batch_size} cannot be split over {world_size} processes; "
                             "use a batch_size that is a multiple of the process count")
        fitted = dataclasses.replace(self, micro_batch_size=fits[0])
        note = (f"micro_batch_size {self.micro_batch_size} -> {fits[0]} so that batch_size {self.batch_size} splits "
                f"over {world_size} processes (accumulation {fitted.accumulation(world_size)})")
        return fitted, note

    @property
    def stage_name(self) -> str:
        return type(self.stage).STAGE

    def for_stage(self, name: str) -> TrainConfig:
        """This config for a run of stage `name`: its settings keep the values of the fields both stages have;
        a setting the user gave that `name` does not have is an error."""
        cls = stages.get(name).option_class()
        if type(self.stage) is cls:
            return self
        stray = [k for k in self.set_fields if k in self.stage.field_names() and k not in cls.field_names()]
        if stray:
            raise ValueError(f"{stray[0]} is a setting of `train {self.stage_name}`, not of `train {name}`")
        values = {k: v for k, v in self.stage.to_dict().items() if k in cls.field_names()}
        return dataclasses.replace(self, stage=cls(**values))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["set_fields"] = list(self.set_fields)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, stage: str = "pretrain") -> TrainConfig:
        """The inverse of `to_dict` for a run of `stage`; also reads the flat layouts of checkpoints written
        before ``model`` and ``stage`` nested (a setting the stage does not have is dropped).

        Raises ValueError for anything else (a damaged train_config.json)."""
        try:
            d = dict(d)
            flat_names = GPTConfig.field_names()  # the flat layout predates other architectures
            model = d.pop("model", None) or {k: d.pop(k) for k in list(d) if k in flat_names}
            options_cls = stages.get(stage).option_class()
            options = d.pop("stage", None) or {k: d[k] for k in options_cls.field_names() if k in d}
            d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)} and k not in flat_names}
            d["set_fields"] = tuple(d.get("set_fields", ()))
            options = options_cls(**{k: v for k, v in options.items() if k in options_cls.field_names()})
            return cls(model=_known_fields_config(model), stage=options, **d)
        except (TypeError, AttributeError) as e:
            raise ValueError(f"not a training config ({e})") from None


def _known_fields_config(model: dict) -> ModelConfig:
    """A recorded model config, dropping fields its architecture no longer has."""
    model = dict(model)
    cls = get(model.get("arch", "gpt2")).config
    return config_from_dict({k: v for k, v in model.items() if k in cls.field_names()})


# Sizes past any machine (a typo such as n_layer=1000000000): one line at once, instead of a plan, a memory
# check or a build that runs for minutes or loops over every micro-batch size up to the batch.
# (The model's fields have their own ranges: `model.lm.ModelConfig.RANGES`, checked where a config is made.)
CEILINGS = {"batch_size": 1 << 24, "micro_batch_size": 1 << 24, "max_steps": 1 << 40, "eval_every": 1 << 40,
            "eval_blocks": 1 << 24, "log_every": 1 << 40, "ckpt_every": 1 << 40, "block_size": 1 << 20}


def validate(config: TrainConfig) -> TrainConfig:
    """Refuse values that can only fail later, with the field's name (the model and the stage's settings
    check their own: `model.lm.ModelConfig.check`, `train.options.StageOptions.check`)."""
    positive = {name: getattr(config, name) for name in ("batch_size", "micro_batch_size", "max_steps",
                                                         "eval_every", "eval_blocks", "log_every", "ckpt_every")}
    for name, value in positive.items():
        if value == AUTO:  # only micro_batch_size can be; resolved at run start
            continue
        if not 0 < value <= CEILINGS[name]:
            raise ValueError(f"{name} must be from 1 to {CEILINGS[name]:,}, got {value}")
    if config.lr <= 0 or not 0 <= config.min_lr_ratio <= 1 or config.warmup_steps < 0:
        raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0")
    if not 0 <= config.seed < 2**63:
        raise ValueError(f"seed must be from 0 to 2**63 - 1, got {config.seed}")
    if not (0 <= config.beta1 < 1 and 0 <= config.beta2 < 1):
        raise ValueError(f"beta1 and beta2 must be in [0, 1), got {config.beta1} and {config.beta2}")
    if config.weight_decay < 0 or config.grad_clip <= 0:
        raise ValueError(f"need weight_decay >= 0 and grad_clip > 0, got {config.weight_decay} and {config.grad_clip}")
    if config.warmup_steps > CEILINGS["max_steps"]:
        raise ValueError(f"warmup_steps must be at most {CEILINGS['max_steps']:,}, got {config.warmup_steps}")
    if not 0 <= config.sample_tokens <= CEILINGS["block_size"]:
        raise ValueError(f"sample_tokens must be >= 0 (0 = no sample at evals), got {config.sample_tokens}")
    _validate_optimizer(config)
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    config.stage.check(config.set_fields)
    if config.compile not in ("auto", "on", "off"):
        raise ValueError(f"compile must be auto, on or off, got {config.compile!r}")
    return config


MUON_FIELDS = ("muon_lr", "muon_momentum", "muon_weight_decay")


def _validate_optimizer(config: TrainConfig) -> None:
    if config.optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be adamw or muon, got {config.optimizer!r}")
    muon_set = [k for k in MUON_FIELDS if k in config.set_fields]
    if muon_set and config.optimizer != "muon":
        raise ValueError(f"{', '.join(muon_set)} set but optimizer is {config.optimizer}; add --set optimizer=muon")
    if config.muon_lr <= 0 or not 0 <= config.muon_momentum < 1 or config.muon_weight_decay < 0:
        raise ValueError("need muon_lr > 0, 0 <= muon_momentum < 1 and muon_weight_decay >= 0")
