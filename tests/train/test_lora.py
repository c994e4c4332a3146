"""LoRA runs (`--set lora_rank=R`, train.lora / model.lora): only the adapters train and are saved, the base
is named by identity and a changed one is refused, kill -9 resumes exactly, LoRA-DPO learns with the base
(adapters off) as its reference, and the memory plan counts a LoRA step."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.profiler import ProfilerActivity, profile

from model.adapters import load_model
from model.archs import build
from model.archs.gpt2 import GPTConfig
from model.archs.qwen3 import Qwen3Config
from model.io import CheckpointError
from model.lora import LoraOptions, adapter_params, attach
from model.runtime import precision
from tests.train.conftest import PY, ROOT, run_cli, tiny_args, write_pretrain, write_sft
from tests.train.test_plan import CPU, allocation_peak
from tests.train.test_pref import dpo_args, pref_setup  # noqa: F401, F811 - pref_setup is a fixture
from tests.train.test_resume import train_lines, wait_for_step
from train.data import StepBatch
from train.dist import Dist
from train.overrides import apply_overrides
from train.plan import Setup, plan_step
from train.presets import preset
from train.stages.sft import SFT
from train.step import Stepper

LORA = ["--set", "lora_rank=4", "--set", "lr=1e-2"]
RUN = ["--eval-every", "6", "--ckpt-every", "3", "--set", "warmup_steps=2"]


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    """SFT dialogs and a tiny pretrained model (bytes tokenizer)."""
    root = tmp_path_factory.mktemp("lora")
    r = run_cli("pretrain", *tiny_args("--data", str(write_pretrain(root / "wiki")), "--out", str(root / "pre"),
                                       "--max-steps", "20", "--eval-every", "20", "--set", "block_size=64"))
    assert r.returncode == 0, r.stderr
    return write_sft(root / "sft_data"), root / "pre"


def sft_args(base, out: Path, *extra: str) -> list[str]:
    data, init = base
    return ["sft", *tiny_args("--data", str(data), "--init", str(init), "--out", str(out), *LORA, *RUN, *extra,
                              shape=False)]


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "sft"
    r = run_cli(*sft_args(base, out, "--max-steps", "12"))
    assert r.returncode == 0, r.stderr
    return out


def test_val_loss_falls_and_the_checkpoint_holds_only_the_adapters(base, lora_run):
    evals = [x["val_loss"] for x in records(lora_run) if "val_loss" in x]
    assert evals[-1] < evals[0] - 0.005  # a tiny base learns slowly with its embeddings and norms frozen
    ckpt = lora_run / "checkpoint"
    assert not (ckpt / "model.safetensors").exists()
    adapters = load_file(ckpt / "adapter.safetensors")
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    info = json.loads((ckpt / "model.json").read_text())
    assert info["adapter"]["rank"] == 4 and info["adapter"]["base"]["path"] == str(base[1])
    n_base = sum(t.numel() for t in load_file(base[1] / "checkpoint" / "model.safetensors").values())
    n = sum(t.numel() for t in adapters.values())
    cfg = json.loads((base[1] / "checkpoint" / "model.json").read_text())["config"]
    assert n == adapter_params(GPTConfig(**{k: v for k, v in cfg.items() if k != "arch"}), LoraOptions(4)) < n_base
    state = torch.load(ckpt / "trainer.pt", weights_only=True)["optimizer"]["state"]
    assert sum(s["exp_avg"].numel() for s in state.values()) == n  # optimizer state for the adapters only


def test_the_merged_model_differs_from_the_base_and_loads_everywhere(base, lora_run):
    merged, info = load_model(lora_run)
    plain, _ = load_model(base[1])
    assert info["chat"] and set(merged.state_dict()) == set(plain.state_dict())  # a plain model again
    assert any(not torch.equal(merged.state_dict()[k], plain.state_dict()[k]) for k in plain.state_dict())
    x = torch.randint(0, 259, (1, 16))
    peft_model = attach(plain, LoraOptions(4))
    assert torch.equal(peft_model(x, x)[0], load_model(base[1])[0](x, x)[0])  # B = 0: starts as the base


def test_a_changed_base_is_one_line_on_resume_and_on_load(base, lora_run, tmp_path):
    pre, run = tmp_path / "pre", tmp_path / "run"
    shutil.copytree(base[1], pre)
    shutil.copytree(lora_run, run)
    info_path = run / "checkpoint" / "model.json"
    info = json.loads(info_path.read_text())
    info["adapter"]["base"]["path"] = str(pre)  # the copy: same weights, so the same identity
    info_path.write_text(json.dumps(info))
    assert load_model(run)[1]["step"] == 12
    weights = pre / "checkpoint" / "model.safetensors"
    changed = bytearray(weights.read_bytes())
    changed[-4:] = bytes(4)  # other weights at the same step
    weights.write_bytes(bytes(changed))
    r = run_cli(*sft_args((base[0], pre), run, "--max-steps", "14"))
    assert r.returncode != 0 and "has changed since: different weights" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(CheckpointError, match="has changed since"):
        load_model(run)


def test_killed_lora_run_resumes_exactly(base, lora_run, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([PY, "-m", "train", *sft_args(base, out, "--max-steps", "12")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(proc, out, 4)  # the checkpoint of step 3 is on disk
    proc.kill()
    proc.wait()
    killed_at = json.loads((out / "checkpoint" / "model.json").read_text())["step"]
    assert 3 <= killed_at < 12
    r = run_cli(*sft_args(base, out, "--max-steps", "12"))
    assert r.returncode == 0, r.stderr
    assert f"at step {killed_at}" in " ".join(r.stderr.split())
    assert train_lines(out) == train_lines(lora_run)  # every step's loss, lr and grad norm, bit for bit
    got = load_file(out / "checkpoint" / "adapter.safetensors")
    want = load_file(lora_run / "checkpoint" / "adapter.safetensors")
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)


def test_lora_settings_are_checked(base, tmp_path):
    r = run_cli(*sft_args(base, tmp_path / "a", "--set", "lora_targets=nope"))
    assert r.returncode != 0 and "no layer named nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="lora_rank is 0"):
        apply_overrides(preset("tiny", "sft"), ["lora_alpha=16"])
    cfg = apply_overrides(preset("tiny", "sft"), ["lora_rank=8"])
    assert cfg.lr == cfg.stage.lora_lr != preset("tiny", "sft").lr  # the overlay's LoRA rate
    assert apply_overrides(preset("tiny", "sft"), ["lora_rank=8", "lr=1e-3"]).lr == 1e-3


def test_qwen3_lora_sft_trains_its_projections(base, tmp_path):
    data, _ = base
    root = tmp_path
    r = run_cli("pretrain", *tiny_args("--data", str(write_pretrain(root / "wiki")), "--out", str(root / "pre"),
                                       "--set", "arch=qwen3", "--max-steps", "4", "--eval-every", "4", "--set", "block_size=64"))
    assert r.returncode == 0, r.stderr
    out = root / "sft"
    r = run_cli(*sft_args((data, root / "pre"), out, "--max-steps", "6", "--set", "lora_targets=q_proj,v_proj"))
    assert r.returncode == 0, r.stderr
    names = load_file(out / "checkpoint" / "adapter.safetensors")
    assert names and {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in names} == {"q_proj", "v_proj"}
    evals = [x["val_loss"] for x in records(out) if "val_loss" in x]
    assert math.isfinite(evals[-1])


def measured_lora_peak(s: Setup, micro: int) -> int:
    cfg = apply_overrides(preset("tiny", "sft"), [
        f"n_layer={s.n_layer}", f"n_head={s.n_head}", f"n_embd={s.n_embd}", f"block_size={s.block_size}",
        f"batch_size={micro}", f"micro_batch_size={micro}", "compile=off", f"lora_rank={s.lora.rank}"])
    g = torch.Generator().manual_seed(0)
    ids = lambda: torch.randint(0, s.vocab_size, (micro, s.block_size), generator=g)  # noqa: E731
    batch = StepBatch(0, [(ids(), ids(), torch.ones(micro, s.block_size, dtype=torch.bool))], micro * s.block_size)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.manual_seed(0)
        model = build(s.model)
        attach(model, s.lora)
        stepper = Stepper(model, cfg, Dist(0, 0, 1, CPU), precision(CPU, "fp32"), SFT)
        for _ in range(2):
            stepper.forward_backward(batch, 1e-3)
            stepper.apply()
    return allocation_peak(prof)


@pytest.mark.parametrize("config", [GPTConfig(n_layer=2, n_head=4, n_embd=256, block_size=64, vocab_size=4096),
                                    Qwen3Config(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=4096)])
def test_the_plan_counts_a_lora_step(config):
    s = Setup(config, lora=LoraOptions(8))
    plan = plan_step(s, 4)
    assert plan.peak == pytest.approx(measured_lora_peak(s, 4), rel=0.15), plan.peak_at
    assert plan.parts["optimizer"] == 8 * adapter_params(config, LoraOptions(8))
    assert plan.peak < plan_step(Setup(config), 4).peak  # no base gradients or moments


def test_lora_dpo_learns_with_the_base_as_reference(pref_setup, tmp_path):  # noqa: F811 - the fixture
    out = tmp_path / "dpo"
    r = run_cli(*dpo_args(pref_setup, out, "--max-steps", "30", "--eval-every", "15", "--set", "lora_rank=8",
                          "--set", "lr=1e-2"))
    assert r.returncode == 0, r.stderr
    train = [x for x in records(out) if "reward_acc" in x]
    evals = [x for x in records(out) if "val_loss" in x]
    assert evals[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the starting model
    assert sum(x["reward_acc"] for x in train[-5:]) / 5 > sum(x["reward_acc"] for x in train[:5]) / 5
    assert evals[-1]["val_reward_acc"] > evals[0]["val_reward_acc"]
    assert (out / "checkpoint" / "adapter.safetensors").is_file() and "LoRA rank 8" in " ".join(r.stderr.split())
