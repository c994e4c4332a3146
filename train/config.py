"""Every training knob in one dataclass, the presets, and ``--set key=value`` overrides.

`TrainConfig` holds the model's own config (``cfg.model``, a `model.lm.ModelConfig` of the architecture
named by its ``arch`` field, `model.arch`) and the training fields. A preset is a named set of field
values; the command line can change any field, model fields included (``--set n_layer=6``,
``--set arch=qwen3``), except the vocabulary size, which always comes from the data's tokenizer. A
field the chosen architecture does not have is an error. Which fields the command line set travels
with the config (`TrainConfig.set_fields`): a stage that starts from --init takes the model shape from
that model unless the user set it, and a resumed run says what changed. All stages share the
dataclass: ``train sft --preset mini`` uses the stage's variant ``mini-sft`` (same model shape, a
learning rate for fine-tuning) where it exists (`train.stage`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields

from model.arch import ARCHS, ArchError, config_for, config_from_dict, get
from model.gpt import GPTConfig
from model.lm import ModelConfig
from model.runtime import DTYPES
from train.stage import get as get_stage

PREF_LOSSES = ("dpo", "simpo", "orpo")  # the preference stage's losses (train.pref_loss)
AUTO = "auto"  # micro_batch_size=auto: the largest that fits, chosen at run start (train.plan.resolve_micro_batch)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=GPTConfig)  # vocab_size is replaced by the data's at run time
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
    # preference stage only (train.pref_loss): the pair loss and its weights; defaults are the published ones
    loss: str = "dpo"  # dpo | simpo | orpo
    dpo_beta: float = 0.1  # DPO paper (Rafailov et al. 2023) and trl's DPOConfig
    simpo_beta: float = 2.0  # SimPO paper's Llama-3-Base recipe (Meng et al. 2024): beta 2.0,
    simpo_gamma: float = 1.0  # gamma_beta_ratio 0.5
    orpo_lambda: float = 0.1  # ORPO paper (Hong et al. 2024) and trl's ORPOConfig beta
    # pretrain and sft with a teacher's sparse targets (train.distill): 0 = plain cross-entropy, 1 = distillation only
    kd_weight: float = 0.0
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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["set_fields"] = list(self.set_fields)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of `to_dict`; also reads the flat layout of checkpoints written before `model` nested.

        Raises ValueError for anything else (a damaged train_config.json)."""
        try:
            d = dict(d)
            flat_names = GPTConfig.field_names()  # the flat layout predates other architectures
            model = d.pop("model", None) or {k: d.pop(k) for k in list(d) if k in flat_names}
            d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)} and k not in flat_names}
            d["set_fields"] = tuple(d.get("set_fields", ()))
            return cls(model=_known_fields_config(model), **d)
        except (TypeError, AttributeError) as e:
            raise ValueError(f"not a training config ({e})") from None


def _known_fields_config(model: dict) -> ModelConfig:
    """A recorded model config, dropping fields its architecture no longer has."""
    model = dict(model)
    cls = get(model.get("arch", "gpt2")).config
    return config_from_dict({k: v for k, v in model.items() if k in cls.field_names()})


# The dataclass defaults are the `mini` preset, the model of record: GPT-2 small's body (85M) with the
# Qwen2 vocabulary (+117M tied embedding) = 202M parameters; 5000 steps x 65,536 tokens = 328M tokens,
# about one epoch of the full wiki_zh_2019 release.
_MINI: dict = {}

# `make demo`: a few minutes on a 2-core CPU. The 151,680-wide output layer costs ~116 MFLOP per token
# whatever the body, so a 2x128 body adds almost nothing and the CPU manages ~500 tokens/s: 400 steps of
# 4 x 64 tokens is ~100k tokens, about ten passes over the bundled sample. With that little data, 1e-3
# learns faster per token than 3e-3 (measured on sample_data; 3e-3 suits the 1.4M-token wiki sample).
_TINY = dict(
    n_layer=2, n_head=4, n_embd=128, block_size=64, batch_size=4, micro_batch_size=4,
    max_steps=400, lr=1e-3, warmup_steps=20, eval_every=100, eval_blocks=16, ckpt_every=200,
    sample_tokens=24, log_every=1,
)

# SFT: a pretrained model, so a short warmup, a learning rate in the usual 1e-5..5e-5 band for the
# model of record, and no weight decay pulling the pretrained weights towards zero.
_SFT = dict(lr=3e-5, warmup_steps=50, weight_decay=0.0, max_steps=2000, batch_size=64, eval_every=100,
            ckpt_every=500, sample_prompt="什么是数学？")  # SFT samples wrap the prompt as a user turn

# Preference tuning (`train dpo`): trl's DPOConfig learning rate (1e-6; Zephyr used 5e-7 at 7B), a 10% warmup
# as LLaMA-Factory's DPO examples, no weight decay (as SFT). batch_size counts sequences: 64 = 32 pairs.
_DPO = dict(lr=1e-6, warmup_steps=100, weight_decay=0.0, max_steps=1000, batch_size=64, eval_every=100,
            ckpt_every=250, sample_prompt="什么是数学？")
_TINY_DPO = {**_TINY, **_DPO, "lr": 5e-4, "warmup_steps": 5, "batch_size": 8, "max_steps": 40, "eval_every": 20,
             "ckpt_every": 40}

_TINY_SFT = {**_TINY, **_SFT, "lr": 5e-4, "warmup_steps": 10, "batch_size": 8, "max_steps": 100,
             "eval_every": 50, "ckpt_every": 100}

# The modern recipe (model/qwen3.py) at the seed presets' cost: qwen3's defaults give the same matmul
# weights per layer (12·C²), so the same depth and width cost the same FLOPs per token.
_QWEN3 = dict(arch="qwen3")

PRESETS: dict[str, dict] = {
    "mini": _MINI,
    "tiny": _TINY,
    "mini-sft": {**_MINI, **_SFT},
    "tiny-sft": _TINY_SFT,
    "mini-dpo": {**_MINI, **_DPO},
    # the demo's: a tiny model learns its pairs' preference in a few dozen steps at this rate (measured)
    "tiny-dpo": _TINY_DPO,
    "qwen3-mini": {**_MINI, **_QWEN3},
    "qwen3-tiny": {**_TINY, **_QWEN3},
    "qwen3-mini-sft": {**_MINI, **_SFT, **_QWEN3},
    "qwen3-tiny-sft": {**_TINY_SFT, **_QWEN3},
    "qwen3-mini-dpo": {**_MINI, **_DPO, **_QWEN3},
    "qwen3-tiny-dpo": {**_TINY_DPO, **_QWEN3},
}


def preset(name: str, stage: str = "pretrain") -> TrainConfig:
    """The preset `name`, or the stage's variant of it where that exists (sft: tiny -> tiny-sft; `train.stage`)."""

    suffix = get_stage(stage).preset_suffix
    if suffix and not name.endswith(suffix) and f"{name}{suffix}" in PRESETS:
        name = f"{name}{suffix}"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return _set(TrainConfig(), PRESETS[name])


def _set(config: TrainConfig, values: dict) -> TrainConfig:
    """`config` with `values` applied, model fields going to ``config.model`` (of the architecture
    ``values["arch"]`` names, if it names one)."""
    own = _train_fields()
    model_values = {k: v for k, v in values.items() if k not in own}
    arch = model_values.pop("arch", config.model.arch)
    model = config_for(arch, config.model, model_values)  # ValueError for a combination it cannot build
    return dataclasses.replace(config, model=model, **{k: v for k, v in values.items() if k in own})


def _train_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrainConfig) if f.name not in ("model", "set_fields")}


def _settable_fields(arch_config: type[ModelConfig]) -> dict[str, dataclasses.Field]:
    """The fields --set can change: the training fields and those of the architecture being set."""
    return _train_fields() | {f.name: f for f in fields(arch_config) if f.name != "vocab_size"}


def _parse(field: dataclasses.Field, text: str):
    if field.name == "micro_batch_size" and text.strip().lower() == AUTO:
        return AUTO
    kind = field.type if isinstance(field.type, type) else {"int": int, "int | str": int, "float": float,
                                                              "bool": bool, "str": str}[field.type]
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if kind is int:
        value = float(text)  # accepts 1e4
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(value)
    if kind is float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    return text


def apply_overrides(config: TrainConfig, assignments: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``key=value`` strings, each value typed from its dataclass field. Unknown keys are errors.

    The keys join `set_fields`, so the run knows what the user chose.
    """
    settable = _settable_fields(_target_arch(config, assignments))
    changes = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        if key == "vocab_size":
            raise ValueError(f"--set {item!r}: vocab_size comes from the data's tokenizer and cannot be set")
        if key not in settable:
            if key in _any_model_field():
                raise ValueError(f"--set {item!r}: arch {_target_arch(config, assignments).arch_name()} has no field "
                                 f"{key!r} (its model fields: {', '.join(sorted(settable.keys() - _train_fields().keys()))})")
            raise ValueError(f"--set {item!r}: unknown field {key!r}; fields are {', '.join(settable)}")
        try:
            changes[key] = _parse(settable[key], text)
        except ValueError as e:
            raise ValueError(f"--set {item!r}: {e}") from None
    set_fields = tuple(dict.fromkeys([*config.set_fields, *changes]))
    return validate(dataclasses.replace(_set(config, changes), set_fields=set_fields))


def config_changes(before: dict | None, now: TrainConfig) -> list[str]:
    """``lr 0.001 -> 0.0005``, ...: the run settings (not the model) that differ from a recorded config."""
    try:
        old = TrainConfig.from_dict(before).to_dict()
    except ValueError:  # a damaged train_config.json: nothing to compare with (the run itself is checked)
        return []
    new = now.to_dict()
    return [f"{k} {old[k]} -> {new[k]}" for k in new if k not in {"set_fields", "model"} and old.get(k) != new[k]]


def shape_of(model: ModelConfig) -> dict:
    """What a checkpoint's model must match to continue or start from it: architecture, shape, vocabulary."""
    return {"arch": model.arch, **{k: getattr(model, k) for k in model.SHAPE_FIELDS}, "vocab_size": model.vocab_size}


def inherit_shape(model: ModelConfig, init: dict, set_fields: tuple[str, ...]) -> ModelConfig:
    """`model` with the architecture and shape fields of a recorded `init` config, except those the user set
    (they must then agree with it: `train.checkpoint.check_shape`); the other fields (dropout, ...) stay
    `model`'s where the architecture has them."""
    recorded = config_from_dict(init)
    if "arch" in set_fields and model.arch != recorded.arch:
        return model  # the user's architecture; the shape check names the difference
    keep = {k: getattr(model, k) for k in set_fields if k in recorded.field_names() and k != "arch"}
    keep |= {k: getattr(model, k) for k in recorded.field_names() - {"arch", "vocab_size", *recorded.SHAPE_FIELDS}
             if hasattr(model, k) and k not in keep}
    return dataclasses.replace(recorded, **keep)


def _target_arch(config: TrainConfig, assignments) -> type[ModelConfig]:
    """The config class of the architecture after `assignments` (the last ``arch=`` among them wins)."""
    name = config.model.arch
    for item in assignments:
        key, sep, text = item.partition("=")
        if sep and key.strip() == "arch":
            name = text.strip()
    try:
        return get(name).config
    except ArchError as e:
        raise ValueError(f"--set arch={name}: {e}") from None


def _any_model_field() -> set[str]:
    get("gpt2")  # the built-in architectures are registered
    return set().union(*(a.config.field_names() for a in ARCHS.values()))


# Sizes past any machine (a typo such as n_layer=1000000000): one line at once, instead of a plan, a memory
# check or a build that runs for minutes or loops over every micro-batch size up to the batch.
CEILINGS = {"n_layer": 1 << 12, "n_head": 1 << 12, "n_embd": 1 << 17, "block_size": 1 << 20,
            "loss_chunk_tokens": 1 << 30, "batch_size": 1 << 24, "micro_batch_size": 1 << 24, "max_steps": 1 << 40,
            "eval_every": 1 << 40, "eval_blocks": 1 << 24, "log_every": 1 << 40, "ckpt_every": 1 << 40}


def validate(config: TrainConfig) -> TrainConfig:
    """Refuse values that can only fail later, with the field's name."""
    m = config.model
    positive = {"n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd, "block_size": m.block_size,
                "loss_chunk_tokens": m.loss_chunk_tokens}
    positive |= {name: getattr(config, name) for name in ("batch_size", "micro_batch_size", "max_steps",
                                                          "eval_every", "eval_blocks", "log_every", "ckpt_every")}
    for name, value in positive.items():
        if value == AUTO:  # only micro_batch_size can be; resolved at run start
            continue
        if not 0 < value <= CEILINGS[name]:
            raise ValueError(f"{name} must be from 1 to {CEILINGS[name]:,}, got {value}")
    if not 0 <= m.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {m.dropout}")
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
    if config.loss not in PREF_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(PREF_LOSSES)}, got {config.loss!r}")
    if min(config.dpo_beta, config.simpo_beta, config.orpo_lambda) <= 0 or config.simpo_gamma < 0:
        raise ValueError("need dpo_beta, simpo_beta, orpo_lambda > 0 and simpo_gamma >= 0")
    if not 0 <= config.kd_weight <= 1:
        raise ValueError(f"kd_weight must be in [0, 1] (0 = plain cross-entropy, 1 = distillation only), "
                         f"got {config.kd_weight}")
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
