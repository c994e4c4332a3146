"""Presets and --set overrides."""

from __future__ import annotations

import pytest

from train.config import PRESETS, TrainConfig, apply_overrides, preset


def test_mini_is_the_model_of_record():
    cfg = preset("mini")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 12, 768, 256)
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.accumulation(1)) == (256, 32, 8)
    assert cfg.accumulation(4) == 2
    assert 3e-4 <= cfg.lr <= 6e-4 and cfg.weight_decay == 0.1 and (cfg.beta1, cfg.beta2) == (0.9, 0.95)


def test_sft_stage_picks_the_sft_variant_with_the_same_shape():
    for name in ("mini", "tiny"):
        pre, sft = preset(name), preset(name, "sft")
        assert sft == preset(f"{name}-sft", "sft")
        assert pre.model_fields() == sft.model_fields()
        assert sft.lr < pre.lr
    assert 1e-5 <= preset("mini", "sft").lr <= 5e-5


def test_every_preset_is_valid():
    for name in PRESETS:
        apply_overrides(preset(name), [])


def test_overrides_are_typed_from_the_dataclass():
    cfg = apply_overrides(TrainConfig(), ["lr=3e-4", "n_layer=6", "bias=false", "device=cpu", "max-steps=1e3"])
    assert cfg.lr == 3e-4 and cfg.n_layer == 6 and cfg.bias is False and cfg.device == "cpu"
    assert cfg.max_steps == 1000 and isinstance(cfg.max_steps, int)


@pytest.mark.parametrize("item, message", [
    ("lr", "expected key=value"),
    ("learning_rate=1", "unknown field 'learning_rate'"),
    ("n_layer=2.5", "expected an integer"),
    ("bias=maybe", "expected true/false"),
    ("n_head=5", "multiple of n_head"),
    ("dtype=fp8", "dtype must be"),
    ("batch_size=0", "batch_size must be positive"),
])
def test_bad_overrides_name_the_field(item, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), [item])


def test_batch_must_split_evenly_over_ranks():
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size 32 x 3"):
        TrainConfig().accumulation(3)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")
