"""The recipe switch: one module says what `modern` means; presets, prep and train read it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from common.recipes import RecipeError, size_of, train_overlay
from train.overrides import apply_overrides
from train.presets import preset

ROOT_SAMPLE = "sample_data/wiki_zh"


def test_sizes_of_preset_names():
    assert [size_of(p) for p in ("tiny", "qwen3-tiny-sft", "mini-dpo", "mine")] == ["tiny", "tiny", "mini", "mine"]


def test_layering_preset_stage_recipe_then_set():
    seed, modern = preset("tiny"), preset("tiny", recipe="modern")
    assert (seed.model.arch, seed.optimizer, seed.recipe) == ("gpt2", "adamw", "seed")
    assert (modern.model.arch, modern.optimizer, modern.lr, modern.recipe) == ("qwen3", "muon", 3e-3, "modern")
    assert modern.model.n_layer == seed.model.n_layer and modern.max_steps == seed.max_steps  # the size stays
    assert preset("mini", recipe="modern").lr == preset("mini").lr  # mini keeps its preset's AdamW rate
    sft = preset("tiny", "sft", "modern")  # fine-tuning: the stage's rates, the architecture from --init
    assert (sft.optimizer, sft.lr) == ("adamw", preset("tiny", "sft").lr)
    overridden = apply_overrides(modern, ["optimizer=adamw", "lr=1e-4"])  # --set has the last word
    assert (overridden.optimizer, overridden.lr, overridden.model.arch) == ("adamw", 1e-4, "qwen3")
    assert train_overlay("seed", "mini", "pretrain") == {}


def test_unknown_recipe_and_set_recipe_refused():
    with pytest.raises(RecipeError, match="unknown recipe 'new'"):
        preset("tiny", recipe="new")
    with pytest.raises(ValueError, match="unknown field 'recipe'"):
        apply_overrides(preset("tiny"), ["recipe=modern"])


def test_prep_modern_cuts_once_and_later_preps_reuse_it(tmp_path):
    from prep.cli import cli

    run = CliRunner().invoke
    wiki = run(cli, ["wiki", ROOT_SAMPLE, "--out", str(tmp_path / "wiki"), "--recipe", "modern", "--vocab-size", "1024",
                     "--workers", "1"])
    assert wiki.exit_code == 0, wiki.output
    vocab = tmp_path / "vocab"
    assert (vocab / "cut_vocab.json").is_file() and not list(tmp_path.glob(".vocab.counting-*"))
    meta = (tmp_path / "wiki" / "meta.json").read_text()
    assert str(vocab) in meta
    stamp = (vocab / "cut_vocab.json").stat().st_mtime_ns
    sft = run(cli, ["sft", "sample_data/belle/multiturn_chat.json", "--out", str(tmp_path / "sft"), "--recipe",
                    "modern", "--workers", "1"])
    assert sft.exit_code == 0, sft.output
    assert str(vocab) in (tmp_path / "sft" / "meta.json").read_text()
    assert (vocab / "cut_vocab.json").stat().st_mtime_ns == stamp  # reused, not cut again
    again = run(cli, ["wiki", ROOT_SAMPLE, "--out", str(tmp_path / "wiki2"), "--recipe", "modern", "--vocab-size",
                      "2048", "--workers", "1"])
    assert again.exit_code == 1 and "1,024 ids, not --vocab-size 2,048" in again.output


def test_prep_modern_without_a_cut_vocabulary_names_the_pretraining_prep(tmp_path):
    from prep.cli import cli

    result = CliRunner().invoke(cli, ["sft", "sample_data/belle/multiturn_chat.json", "--out", str(tmp_path / "sft"),
                                      "--recipe", "modern"])
    assert result.exit_code == 1 and "prep wiki|text --recipe modern" in result.output
    result = CliRunner().invoke(cli, ["sft", "x.json", "--out", str(tmp_path / "sft"), "--recipe", "modern",
                                      "--tokenizer", "bytes"])
    assert result.exit_code == 1 and "leave out --tokenizer bytes" in result.output
