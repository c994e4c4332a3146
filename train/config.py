"""Every training knob in one dataclass, the presets, and ``--set key=value`` overrides.

A preset is a named set of field values; the command line can change any field. Pretraining and
SFT share the dataclass: ``train sft --preset mini`` uses the SFT variant ``mini-sft`` (same model
shape, a learning rate for fine-tuning).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")
AUTO = "auto"  # micro_batch_size=auto: the largest that fits, chosen at run start (train.plan.resolve_micro_batch)


@dataclass
class TrainConfig:
    # model (the vocabulary size comes from the data's tokenizer)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 256
    dropout: float = 0.0
    bias: bool = True
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
    # evaluation, logging, checkpoints
    eval_every: int = 250
    eval_blocks: int = 64  # fixed validation blocks per eval
    sample_prompt: str = "数学是"  # pretraining: text to continue; SFT: a user message (ChatML-wrapped)
    sample_tokens: int = 32
    log_every: int = 1
    ckpt_every: int = 500
    # runtime
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 where supported, else fp16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    compile: str = "auto"  # auto (on for CUDA) | on | off
    loss_chunk_tokens: int = 1024  # tokens per chunk of the output layer + cross-entropy

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

    def model_fields(self) -> dict:
        return {k: getattr(self, k) for k in MODEL_FIELDS}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2, sort_keys=True)


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

PRESETS: dict[str, dict] = {
    "mini": _MINI,
    "tiny": _TINY,
    "mini-sft": {**_MINI, **_SFT},
    "tiny-sft": {**_TINY, **_SFT, "lr": 5e-4, "warmup_steps": 10, "batch_size": 8, "max_steps": 100,
                 "eval_every": 50, "ckpt_every": 100},
}


def preset(name: str, stage: str = "pretrain") -> TrainConfig:
    """The preset `name`; for SFT a plain name (``mini``) means its SFT variant (``mini-sft``)."""
    if stage == "sft" and not name.endswith("-sft") and f"{name}-sft" in PRESETS:
        name = f"{name}-sft"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(**PRESETS[name])


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
    """Apply ``key=value`` strings, each value typed from the dataclass field. Unknown keys are errors."""
    by_name = {f.name: f for f in fields(TrainConfig)}
    changes = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        if key not in by_name:
            raise ValueError(f"--set {item!r}: unknown field {key!r}; fields are {', '.join(by_name)}")
        try:
            changes[key] = _parse(by_name[key], text)
        except ValueError as e:
            raise ValueError(f"--set {item!r}: {e}") from None
    return validate(dataclasses.replace(config, **changes))


def validate(config: TrainConfig) -> TrainConfig:
    """Refuse values that can only fail later, with the field's name."""
    positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "micro_batch_size", "max_steps",
                "eval_every", "eval_blocks", "log_every", "ckpt_every", "loss_chunk_tokens")
    for name in positive:
        if getattr(config, name) == AUTO:  # only micro_batch_size can be; resolved at run start
            continue
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    if config.n_embd % config.n_head:
        raise ValueError(f"n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head})")
    if not 0 <= config.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
    if config.lr <= 0 or not 0 <= config.min_lr_ratio <= 1 or config.warmup_steps < 0:
        raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0")
    if config.dtype not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {config.dtype!r}")
    if config.compile not in ("auto", "on", "off"):
        raise ValueError(f"compile must be auto, on or off, got {config.compile!r}")
    return config
