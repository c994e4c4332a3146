"""Presets and --set overrides."""

from __future__ import annotations

import json

import pytest

from train.config import TrainConfig
from train.overrides import apply_overrides
from train.presets import PRESETS, preset


def test_mini_is_the_model_of_record():
    cfg = preset("mini")
    m = cfg.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (12, 12, 768, 256)
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.accumulation(1)) == (256, 32, 8)
    assert cfg.accumulation(4) == 2
    assert 3e-4 <= cfg.lr <= 6e-4 and cfg.weight_decay == 0.1 and (cfg.beta1, cfg.beta2) == (0.9, 0.95)


def test_sft_stage_picks_the_sft_variant_with_the_same_shape():
    for name in ("mini", "tiny"):
        pre, sft = preset(name), preset(name, "sft")
        assert sft == preset(f"{name}-sft", "sft")
        assert pre.model == sft.model
        assert sft.lr < pre.lr
    assert 1e-5 <= preset("mini", "sft").lr <= 5e-5


def test_every_preset_is_valid():
    for name in PRESETS:
        apply_overrides(preset(name), [])


def test_overrides_are_typed_from_the_dataclass():
    cfg = apply_overrides(TrainConfig(), ["lr=3e-4", "n_layer=6", "bias=false", "device=cpu", "max-steps=1e3"])
    assert cfg.lr == 3e-4 and cfg.model.n_layer == 6 and cfg.model.bias is False and cfg.device == "cpu"
    assert cfg.max_steps == 1000 and isinstance(cfg.max_steps, int)
    assert cfg.set_fields == ("lr", "n_layer", "bias", "device", "max_steps")


@pytest.mark.parametrize("item, message", [
    ("lr", "expected key=value"),
    ("learning_rate=1", "unknown field 'learning_rate'"),
    ("n_layer=2.5", "expected an integer"),
    ("bias=maybe", "expected true/false"),
    ("n_head=5", "multiple of n_head"),
    ("dtype=fp8", "dtype must be"),
    ("vocab_size=100", "comes from the data's tokenizer"),
    ("seed=-1", "seed must be from 0"),
    ("beta1=2", "beta1 and beta2 must be in"),
    ("grad_clip=-1", "grad_clip > 0"),
    ("batch_size=0", "batch_size must be from 1"),
    # absurd sizes: one line at once, never a plan or a build that runs for minutes
    ("n_layer=1000000000", "n_layer = 1000000000, expected an integer from 1 to 1,024"),
    ("batch_size=1000000000000", "batch_size must be from 1"),
    ("block_size=1e12", "block_size = 1000000000000"),
    ("max_steps=1e30", "max_steps must be from 1"),
    ("lr=nan", "finite number"),
    ("lr=inf", "finite number"),
])
def test_bad_overrides_name_the_field(item, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), [item])


def test_batch_must_split_evenly_over_ranks():
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size 32 x 3"):
        TrainConfig().accumulation(3)


def test_a_preset_fits_the_process_count_by_its_micro_batch():
    """make pretrain NPROC=2 PRESET=tiny: 4 sequences of micro-batch 4 over 2 ranks -> micro-batch 2."""
    cfg, note = preset("tiny").fit_to_ranks(2)
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.accumulation(2)) == (4, 2, 1) and "4 -> 2" in note
    assert preset("tiny").fit_to_ranks(1) == (preset("tiny"), None)
    with pytest.raises(ValueError, match="cannot be split over 3 processes"):
        preset("tiny").fit_to_ranks(3)
    explicit = apply_overrides(preset("tiny"), ["micro_batch_size=4"])
    with pytest.raises(ValueError, match="micro_batch_size 4 x 2"):
        explicit.fit_to_ranks(2)


def test_config_round_trips_through_json_and_reads_the_old_flat_layout():
    cfg = apply_overrides(preset("tiny"), ["lr=2e-3"])
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    flat = {k: v for k, v in cfg.to_dict().items() if k != "model"} | cfg.model.to_dict()
    assert TrainConfig.from_dict(flat).model == cfg.model


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")
