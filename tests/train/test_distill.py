"""``--set kd_weight=W`` on pretrain and SFT: trains on a ``model teach`` folder, logs ce and kd, is exact
across micro-batches, and is one line without teacher targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.io import save_model
from model.teach.capture import TeachOptions, teach
from prep.tokenfile import open_token_folder
from tests.model.conftest import tiny_model
from tests.train.conftest import tiny_args, write_pretrain, write_sft
from tests.train.test_sft_and_errors import invoke, one_line_error
from train.data import BlockSampler
from train.distill import DistillSampler


@pytest.fixture(scope="module")
def taught(tmp_path_factory, byte_tokenizer):
    """A bytes-tokenizer pretraining folder, a small teacher run of the same vocabulary, and its targets."""
    tmp = tmp_path_factory.mktemp("distill")
    data = write_pretrain(tmp / "data")
    save_model(tmp / "teacher", tiny_model(block_size=64), byte_tokenizer.identity(), "pretrain", 10)
    teach(data, str(tmp / "teacher"), tmp / "taught", TeachOptions(k=4))
    return tmp


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kd_weight_trains_and_logs_its_parts(taught):
    out = taught / "run"
    r = invoke("pretrain", *tiny_args("--data", str(taught / "taught"), "--out", str(out), "--max-steps", "2",
                                      "--eval-every", "2", "--set", "kd_weight=0.5"))
    assert r.exit_code == 0, r.output
    steps = [rec for rec in records(out) if "loss" in rec]
    assert steps and all({"ce", "kd"} <= rec.keys() for rec in steps)
    for rec in steps:  # the loss is the mix of its parts
        assert rec["loss"] == pytest.approx(0.5 * rec["ce"] + 0.5 * rec["kd"], rel=1e-4)


def test_the_loss_is_a_sum_exact_across_micro_batches_and_chunks(taught):
    """The step divides the summed loss by its global target count (`train.step`): exact when the sums of
    micro-batches add up to the sum of their concatenation, whatever the loss chunk."""
    split = open_token_folder(taught / "taught").split("train")
    sampler = DistillSampler(BlockSampler(split, 32, 2, seed=0, sft=False))
    micro = [sampler.micro_batch(0, i) for i in range(4)]
    whole = [np.concatenate(parts) for parts in zip(*micro, strict=True)]
    model = tiny_model()

    def sums(arrays, chunk):
        model.config.loss_chunk_tokens = chunk
        x, y, mask, ids, counts = (torch.from_numpy(a) for a in arrays)
        with torch.no_grad():
            loss, n, parts = model(x, y, mask, teacher=(ids, counts, 0.7))
        return torch.stack([loss, parts["ce"], parts["kd"], n])

    assert (micro[0][4].astype(int).sum(-1) == 4).all()  # teacher targets aligned with every y
    assert torch.allclose(sum(sums(m, 1024) for m in micro), sums(whole, 13), rtol=1e-5)


def test_kd_weight_without_targets_is_one_line(taught, tmp_path):
    r = invoke("pretrain", *tiny_args("--data", str(taught / "data"), "--out", str(tmp_path / "run"),
                                      "--max-steps", "1", "--set", "kd_weight=0.5"))
    assert "needs teacher targets" in one_line_error(r) and "make teach" in one_line_error(r)
    r = invoke("pretrain", *tiny_args("--data", str(taught / "taught"), "--out", str(tmp_path / "run"),
                                      "--max-steps", "1", "--set", "kd_weight=1.5"))
    assert "kd_weight" in one_line_error(r)


def test_sft_distills_only_where_the_mask_trains(tmp_path, byte_tokenizer):
    data = write_sft(tmp_path / "sft")
    save_model(tmp_path / "teacher", tiny_model(block_size=64), byte_tokenizer.identity(), "sft", 10)
    teach(data, str(tmp_path / "teacher"), tmp_path / "taught", TeachOptions(k=3))
    init = tmp_path / "init"
    save_model(init, tiny_model(), byte_tokenizer.identity(), "pretrain", 1)
    r = invoke("sft", *tiny_args("--data", str(tmp_path / "taught"), "--init", str(init), "--out",
                                 str(tmp_path / "run"), "--max-steps", "2", "--eval-every", "2",
                                 "--set", "kd_weight=1", shape=False))
    assert r.exit_code == 0, r.output
    steps = [rec for rec in records(tmp_path / "run") if "loss" in rec]
    assert all(rec["loss"] == pytest.approx(rec["kd"], rel=1e-5) for rec in steps)


def test_distillation_loss_matches_autograd():
    from model.distill_loss import distill_loss

    torch.manual_seed(0)
    h = torch.randn(2, 19, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    y, mask = torch.randint(0, 40, (2, 19)), torch.rand(2, 19) > 0.3
    ids, counts = torch.randint(0, 40, (2, 19, 5)), torch.randint(0, 3, (2, 19, 5)).to(torch.uint8)
    loss, parts = distill_loss(h, w, y, mask, (ids, counts, 0.3), 7, torch.float64)
    loss.backward()
    got = (h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    lp = torch.log_softmax(h @ w.t(), -1)
    ce = -(lp.gather(-1, y[..., None]).squeeze(-1) * mask).sum()
    kd = -((counts.double() / 5 * lp.gather(-1, ids)).sum(-1) * mask).sum()
    (0.7 * ce + 0.3 * kd).backward()
    assert float(parts["ce"]) == pytest.approx(float(ce.detach()), rel=1e-5)
    assert float(parts["kd"]) == pytest.approx(float(kd.detach()), rel=1e-5)
    assert torch.allclose(got[0], h.grad, atol=1e-5) and torch.allclose(got[1], w.grad, atol=1e-5)


def test_the_memory_plan_counts_the_teacher_targets():
    from train.overrides import apply_overrides
    from train.plan import Setup, plan_step
    from train.presets import preset

    cfg = preset("tiny")
    plain = plan_step(Setup.of(cfg, 384, "fp32", "cpu"), 4)
    taught = plan_step(Setup.of(apply_overrides(cfg, ["kd_weight=0.5"]), 384, "fp32", "cpu"), 4)
    n = 4 * cfg.model.block_size
    assert taught.parts["teacher"] == 13 * n * 12 + 12 * n * 12 and plain.parts["teacher"] == 0
    assert taught.peak == plain.peak + taught.parts["teacher"]
