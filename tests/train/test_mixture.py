"""Mixtures of token folders: the --data rule, the sampler's shares, per-folder validation, exact resume,
the recorded mixture and its check on resume, and `train eval` on a mixture."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console
from safetensors.torch import load_file

from model.io import load_model
from prep.tokenfile import open_token_folder
from prep.tokenizer import load_tokenizer
from tests.test_make import make, make_ready  # noqa: F401 - make_ready: a fixture, used by name
from tests.train.conftest import TINY_SET, run_cli, tiny_args, write_pretrain, write_sft
from tests.train.test_trust import one_line
from train.cli import cli
from train.data import BlockSampler, MixtureSampler, StepLoader, eval_starts, make_sampler, read_windows
from train.evaluate import bits_per_byte, evaluate_windows
from train.full_eval import evaluate_checkpoint
from train.mixture import MixtureError, open_mixture, parse_mixture, weighted_mean
from train.overrides import apply_overrides
from train.presets import preset
from train.trainer import RunSpec, TrainError, train

WEIGHTS = {"wiki": 0.25, "web": 0.75}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix")
    return {"wiki": write_pretrain(root / "wiki"), "web": write_pretrain(root / "my web", n_docs=60, seed=7)}


def spec(folders: dict[str, Path], weights: dict[str, float] = WEIGHTS) -> str:
    return ",".join(f"{folders[name]}:{w}" for name, w in weights.items())


def cfg(*extra: str):
    return apply_overrides(preset("tiny"), [*TINY_SET, "eval_every=5", *extra])


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- the --data rule ----------------------------------------------------------------------------------


def test_the_weight_is_the_number_after_the_last_colon(tmp_path):
    specs = parse_mixture("data_bin/wiki:0.3, data_bin/my web:.7,runs:v2/web:2,x:y:1e-1")
    assert [(str(s.path), s.weight) for s in specs] == [
        ("data_bin/wiki", 0.3), ("data_bin/my web", 0.7), ("runs:v2/web", 2.0), ("x:y", 0.1)]
    assert [(str(s.path), s.weight) for s in parse_mixture("a,b")] == [("a", None), ("b", None)]
    odd = tmp_path / "web:0.5,2024"  # an existing folder is that folder, whatever its name holds
    odd.mkdir()
    assert [(s.path, s.weight) for s in parse_mixture(str(odd))] == [(odd, None)]


@pytest.mark.parametrize("text, message", [
    ("a:0.3,b", "no weight for b"),
    ("a:0,b:1", "a weight must be a positive number"),
    ("a:0.5,,b:0.5", "empty folder name"),
    (" ", "--data is empty"),
])
def test_bad_specs_are_one_line(text, message):
    with pytest.raises(MixtureError, match=message):
        parse_mixture(text)


def test_open_normalises_weights_and_names_folders(folders):
    m = open_mixture(f"{folders['wiki']}:1,{folders['web']}:3")
    assert m.names == ["wiki", "my web"] and m.weights == [0.25, 0.75] and m.label == "wiki+my web"
    assert open_mixture(f"{folders['wiki']},{folders['web']}").weights == [0.5, 0.5]
    record = m.record()["sources"][1]
    meta = (folders["web"] / "meta.json").read_bytes()
    assert record["meta_sha256"] == hashlib.sha256(meta).hexdigest() and record["weight"] == 0.75
    assert record["tokens"] == {k: v["tokens"] for k, v in json.loads(meta)["splits"].items()}
    with pytest.raises(MixtureError, match="appears twice"):
        open_mixture(f"{folders['wiki']}:1,{folders['wiki']}/:1")
    huge = open_mixture(f"{folders['wiki']}:1e308,{folders['web']}:1e308")  # their sum overflows to infinity
    assert huge.weights == [0.5, 0.5]
    for bad in ("nan", "inf", "-1", "0", "1e-300"):  # 1e-300 beside 1: a share that would never be drawn
        with pytest.raises(MixtureError, match="weight|share"):
            open_mixture(f"{folders['wiki']}:{bad},{folders['web']}:1")


def test_mixing_kinds_or_tokenizers_is_refused_in_one_line(folders, sft_data, tmp_path):
    other = write_pretrain(tmp_path / "other", identity={**load_tokenizer("bytes").identity(), "fingerprint": "x"})
    kinds = one_line(run_cli("pretrain", *tiny_args("--data", f"{folders['wiki']}:1,{sft_data}:1", "--out",
                                                    str(tmp_path / "a"))))
    assert "a 'pretrain' token folder but" in kinds and "all pretraining folders or all SFT folders" in kinds
    toks = one_line(run_cli("pretrain", *tiny_args("--data", f"{folders['wiki']}:1,{other}:1", "--out",
                                                   str(tmp_path / "b"))))
    assert "fingerprint" in toks and "prepped with the same tokenizer" in toks
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- the sampler --------------------------------------------------------------------------------------


def test_each_source_is_drawn_at_its_weight(folders, sft_data):
    splits = [open_token_folder(p).split("train") for p in (folders["wiki"], folders["web"], sft_data)]
    weights = [0.2, 0.3, 0.5]
    sampler = MixtureSampler([BlockSampler(s, 16, 8, 0, sft=False) for s in splits], weights, 8, seed=5)
    sources = np.concatenate([sampler.draw(step, index)[0] for step in range(625) for index in range(4)])
    n = len(sources)
    assert n == 20_000
    for k, p in enumerate(weights):  # binomial counts: 5 sigma, a false alarm about once in 1.7 million runs
        assert abs(np.sum(sources == k) - n * p) < 5 * math.sqrt(n * p * (1 - p)), (k, np.sum(sources == k))


def test_rows_are_windows_of_their_source_and_a_pure_function(folders):
    splits = [open_token_folder(folders[n]).split("train") for n in ("wiki", "web")]
    sampler = make_sampler(splits, [0.5, 0.5], 16, 6, seed=1, sft=False)
    sources, starts = sampler.draw(3, 2)
    x, y, mask = sampler.micro_batch(3, 2)
    assert set(sources.tolist()) == {0, 1}  # both sources in this batch, so the check below means something
    for row, (k, start) in enumerate(zip(sources, starts, strict=True)):
        want = read_windows(splits[k], np.array([start]), 16)
        assert all(np.array_equal(got[row], w[0]) for got, w in zip((x, y, mask), want, strict=True))
    again = make_sampler(splits, [0.5, 0.5], 16, 6, seed=1, sft=False).micro_batch(3, 2)
    assert all(np.array_equal(a, b) for a, b in zip((x, y, mask), again, strict=True))
    assert not np.array_equal(x, sampler.micro_batch(3, 3)[0])
    assert isinstance(make_sampler(splits[:1], [1.0], 16, 6, 1, False), BlockSampler)  # one folder: as before


def test_a_mixture_splits_over_ranks_like_one_process(folders):
    splits = [open_token_folder(folders[n]).split("train") for n in ("wiki", "web")]
    sampler = make_sampler(splits, [0.3, 0.7], 16, 2, seed=0, sft=False)
    cpu = torch.device("cpu")
    loaders = [StepLoader(sampler, rank, 2, 4, cpu) for rank in (0, 1)] + [StepLoader(sampler, 0, 4, 4, cpu)]
    try:
        r0, r1, single = (loader.get(4) for loader in loaders)
    finally:
        for loader in loaders:
            loader.close()
    for got, want in zip(single.micro, r0.micro + r1.micro, strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_sft_mixture_windows_start_at_user_turns(sft_data, tmp_path):
    other = write_sft(tmp_path / "sft2", n_dialogs=20)
    splits = [open_token_folder(p).split("train") for p in (sft_data, other)]
    sampler = make_sampler(splits, [0.5, 0.5], 32, 8, seed=2, sft=True)
    sources, starts = sampler.draw(0, 0)
    for k, start in zip(sources, starts, strict=True):
        assert start in set(np.asarray(splits[k].turn_starts).tolist())


# -- a mixed run: per-folder validation, the record, report, eval ---------------------------------------


@pytest.fixture(scope="module")
def mixed_run(folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed") / "run"
    train(cfg("max_steps=10"), RunSpec("pretrain", spec(folders), out), quiet())
    return out


def test_validation_per_folder_and_the_weighted_mean(mixed_run, folders):
    evals = [r for r in records(mixed_run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 5, 10]
    last = evals[-1]
    assert list(last["sources"]) == ["wiki", "my web"]
    model, _ = load_model(mixed_run)
    block, blocks = model.config.block_size, cfg().eval_blocks
    for name, path in (("wiki", folders["wiki"]), ("my web", folders["web"])):
        split = open_token_folder(path).split("val")
        s, n = evaluate_windows(model, split, eval_starts(split, block, blocks, False), block, 4, torch.device("cpu"))
        assert last["sources"][name]["val_loss"] == pytest.approx(s / n, rel=1e-5)
        assert last["sources"][name]["val_bpb"] == pytest.approx(bits_per_byte(s / n, split), rel=1e-5)
    per = [last["sources"][n] for n in ("wiki", "my web")]
    assert last["val_loss"] == pytest.approx(0.25 * per[0]["val_loss"] + 0.75 * per[1]["val_loss"], rel=1e-12)
    assert last["val_bpb"] == pytest.approx(0.25 * per[0]["val_bpb"] + 0.75 * per[1]["val_bpb"], rel=1e-12)
    assert (mixed_run / "loss.png").stat().st_size > 1000


def test_the_checkpoint_records_the_mixture(mixed_run, folders):
    info = json.loads((mixed_run / "checkpoint" / "train_config.json").read_text())
    assert info["data"] == spec(folders)
    assert info["mixture"] == open_mixture(spec(folders)).record()


def test_report_shows_each_folder(mixed_run):
    r = CliRunner().invoke(cli, ["report", str(mixed_run)], terminal_width=200)
    assert r.exit_code == 0, r.output
    last = records(mixed_run)[-1]
    assert "val loss (weighted)" in r.output
    for name in ("wiki", "my web"):
        assert f"{last['sources'][name]['val_loss']:.3f} (step 10)" in r.output
        assert f"{last['sources'][name]['val_bpb']:.3f} bits/byte" in r.output


def test_eval_reports_each_folder_of_a_mixture(mixed_run, folders):
    out = mixed_run / "eval.json"
    r = CliRunner().invoke(cli, ["eval", "--ckpt", str(mixed_run), "--data", spec(folders), "--out", str(out)],
                           terminal_width=200)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    alone = {name: evaluate_checkpoint(mixed_run, folders[key], device="cpu")
             for name, key in (("wiki", "wiki"), ("my web", "web"))}
    for (name, single), weight in zip(alone.items(), WEIGHTS.values(), strict=True):
        got = result["sources"][name]
        assert got["loss"] == pytest.approx(single["loss"], rel=1e-6) and got["weight"] == weight
        assert got["target_tokens"] == single["target_tokens"] and f"{single['loss']:.4f}" in r.output
    assert result["loss"] == pytest.approx(weighted_mean([alone["wiki"]["loss"], alone["my web"]["loss"]],
                                                         [0.25, 0.75]), rel=1e-12)
    assert result["target_tokens"] == sum(s["target_tokens"] for s in alone.values())
    assert re.search(rf"weighted\s*│\s*1\s*│\s*{result['loss']:.4f}", r.output), r.output
    default = CliRunner().invoke(cli, ["eval", "--ckpt", str(mixed_run), "--data", spec(folders)])
    assert default.exit_code == 0 and (mixed_run / "eval_wiki+my web_val.json").is_file()


# -- resume ---------------------------------------------------------------------------------------------


def train_lines(out: Path) -> list[dict]:
    return [r for r in records(out) if "loss" in r and "val_loss" not in r]


def test_a_stopped_mixture_run_resumes_exactly(folders, tmp_path):
    data = spec(folders)
    ref, out = tmp_path / "ref", tmp_path / "run"
    train(cfg("max_steps=8", "eval_every=4"), RunSpec("pretrain", data, ref), quiet())
    first = train(cfg("max_steps=8", "eval_every=4"), RunSpec("pretrain", data, out, stop_at=5), quiet())
    assert first.reason == "stop_at" and first.step == 5
    train(cfg("max_steps=8", "eval_every=4"), RunSpec("pretrain", data, out), quiet())
    strip = lambda rows: [{k: r[k] for k in ("step", "loss", "lr", "grad_norm")} for r in rows]  # noqa: E731
    assert strip(train_lines(out)) == strip(train_lines(ref))
    assert [r for r in records(out) if "val_loss" in r] == [r for r in records(ref) if "val_loss" in r]
    a, b = load_file(out / "checkpoint" / "model.safetensors"), load_file(ref / "checkpoint" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in b)


def test_resuming_on_another_mixture_is_refused_unless_allowed(mixed_run, folders, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(mixed_run, out)
    other = {"wiki": 0.5, "web": 0.5}
    with pytest.raises(TrainError, match=r"other data: weight of wiki 0\.25 -> 0\.5; weight of my web 0\.75 -> 0\.5"):
        train(cfg("max_steps=11"), RunSpec("pretrain", spec(folders, other), out), quiet())
    with pytest.raises(TrainError, match=r"folders .*wiki, .*my web -> .*wiki\. Resume with the same --data"):
        train(cfg("max_steps=11"), RunSpec("pretrain", str(folders["wiki"]), out), quiet())
    assert json.loads((out / "checkpoint" / "model.json").read_text())["step"] == 10  # nothing was changed
    console = quiet()
    result = train(cfg("max_steps=11"), RunSpec("pretrain", spec(folders, other), out, allow_data_change=True), console)
    assert result.step == 11 and "data changed since the checkpoint (allowed): weight of wiki" in console.file.getvalue()
    assert json.loads((out / "checkpoint" / "train_config.json").read_text())["mixture"]["sources"][0]["weight"] == 0.5


def test_a_reprepped_folder_is_a_change_and_a_moved_one_is_not(mixed_run, folders, tmp_path):
    out, moved = tmp_path / "run", tmp_path / "moved" / "[b]old wiki"  # a name rich would take for markup
    shutil.copytree(mixed_run, out)
    shutil.copytree(folders["wiki"], moved)
    console = quiet()
    train(cfg("max_steps=11"), RunSpec("pretrain", f"{moved}:0.25,{folders['web']}:0.75", out), console)
    printed = " ".join(console.file.getvalue().split())
    assert f"moved {folders['wiki']} -> {moved}" in printed
    assert "step 11: train loss" in printed and "([b]old wiki " in printed, printed  # the eval line, names as they are
    shutil.rmtree(moved)
    write_pretrain(moved, n_docs=41)
    err = one_line(run_cli("pretrain", *tiny_args("--data", f"{moved}:0.25,{folders['web']}:0.75",
                                                  "--out", str(out), "--max-steps", "12")))
    assert f"{moved} is not the folder it was (meta.json sha256" in err and "--allow-data-change" in err


@pytest.mark.usefixtures("make_ready")
def test_make_hands_a_mixture_with_spaces_and_colons_to_the_program(mixed_run, folders, tmp_path):
    odd = tmp_path / "corpora $HOME" / "we:b 2"
    shutil.copytree(folders["web"], odd)
    out = tmp_path / "eval.json"
    r = make("eval", f"CKPT={mixed_run}", f"DATA={folders['wiki']}:0.25, {odd}:0.75", f"ARGS=--out '{out}'",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["sources"]["we:b 2"]["path"] == str(odd) and result["sources"]["we:b 2"]["weight"] == 0.75


def test_a_checkpoint_from_before_mixtures_were_recorded_resumes(mixed_run, folders, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(mixed_run, out)
    config = out / "checkpoint" / "train_config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "mixture"}))
    result = train(cfg("max_steps=11"), RunSpec("pretrain", spec(folders, {"wiki": 0.5, "web": 0.5}), out), quiet())
    assert result.step == 11  # nothing to compare with: resumed, and the mixture is recorded from now on
    assert json.loads(config.read_text())["mixture"] == open_mixture(spec(folders, {"wiki": 0.5, "web": 0.5})).record()
