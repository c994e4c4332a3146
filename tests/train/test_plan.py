"""`train plan`: the memory model against measured steps, micro_batch_size=auto, and the compiled step.

How a CPU step's peak is measured: the PyTorch profiler with ``profile_memory=True`` records every
allocation and free of the CPU allocator together with the running total of live tensor bytes
(``total_allocated``); the peak is the largest running total minus the total before the first
allocation. This counts exactly what the plan models, tensor storage, and is the CPU counterpart of
``torch.cuda.max_memory_allocated``. The process's peak RSS (``ru_maxrss``) was the other candidate,
but it adds the libraries, oneDNN's scratch space and malloc's fragmentation (about +90 MB on a
600 MB step here, varying with the allocator's history), so it measures the process, not the step;
`train.plan.SAFETY` is what leaves room for that. Everything the step needs (model, optimizer state)
is created inside the profile, and the second step is the steady state (AdamW's moments exist).
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from click.testing import CliRunner
from torch.profiler import ProfilerActivity, profile

from model.archs import build
from model.archs.gpt2 import GPT, GPTConfig
from model.archs.qwen3 import Qwen3Config
from model.runtime import precision
from tests.train.conftest import tiny_args
from train.cli import cli
from train.config import AUTO
from train.data import StepBatch
from train.dist import Dist
from train.overrides import apply_overrides
from train.plan import (
    FREE_MEMORY_ENV,
    SAFETY,
    PlanError,
    Setup,
    cuda_memory_check,
    divisors,
    fmt,
    parse_size,
    plan_step,
    resolve_micro_batch,
)
from train.presets import preset
from train.stages.pretrain import PRETRAIN
from train.step import Stepper

CPU = torch.device("cpu")


def allocation_peak(prof) -> int:
    """Peak live tensor bytes during a profile, from the CPU allocator's allocation events."""
    from torch._C._profiler import _EventType  # private, but the only record of intra-op temporaries

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    events = sorted((n.start_time_ns, n.extra_fields.total_allocated, n.extra_fields.alloc_size)
                    for n in walk(prof.profiler.kineto_results.experimental_event_tree())
                    if n.tag == _EventType.Allocation)
    assert events, "the profiler recorded no allocations"
    before = events[0][1] - events[0][2]
    return max(total for _, total, _ in events) - before


def gpt_setup(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int, dtype: str = "fp32",
              device: str = "cpu", **model) -> Setup:
    return Setup(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size,
                           **model), dtype, device)


def measured_peak(s: Setup, micro: int, accumulation: int) -> int:
    """Peak tensor bytes of the second optimizer step of a real `Stepper` (eager) for this setup."""
    cfg = apply_overrides(preset("tiny"), [
        f"n_layer={s.n_layer}", f"n_head={s.n_head}", f"n_embd={s.n_embd}", f"block_size={s.block_size}",
        f"batch_size={micro * accumulation}", f"micro_batch_size={micro}", f"loss_chunk_tokens={s.loss_chunk_tokens}",
        f"dtype={s.dtype}", "compile=off", f"optimizer={s.optimizer}"])
    g = torch.Generator().manual_seed(0)
    ids = lambda: torch.randint(0, s.vocab_size, (micro, s.block_size), generator=g)  # noqa: E731
    batch = StepBatch(0, [(ids(), ids(), torch.ones(micro, s.block_size, dtype=torch.bool))
                          for _ in range(accumulation)], micro * accumulation * s.block_size)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.manual_seed(0)
        model = build(s.model)
        stepper = Stepper(model, cfg, Dist(0, 0, 1, CPU), precision(CPU, s.dtype), PRETRAIN)
        for _ in range(2):
            stepper.forward_backward(batch, 1e-3)
            stepper.apply()
    return allocation_peak(prof)


# Three shapes whose peaks fall at different moments of the step, each at two micro-batches (the second
# with accumulation, so earlier gradients are live): the Qwen2 vocabulary on a tiny body with 2 loss
# chunks at the larger micro-batch (output layer forward), a wide body on a 128-id vocabulary (the
# blocks' backward), and deep-and-short sequences with a mid vocabulary (embedding / output backward).
SHAPES = {
    "qwen-vocab": (gpt_setup(2, 2, 64, 64, 151680, loss_chunk_tokens=64), (1, 1), (2, 2)),
    "wide-body": (gpt_setup(2, 4, 256, 64, 128), (2, 1), (4, 2)),
    "deep-short": (gpt_setup(4, 4, 256, 16, 4096), (1, 1), (2, 2)),
}


@pytest.mark.parametrize("name", SHAPES)
def test_plan_is_within_15_percent_of_a_measured_fp32_step(name):
    setup, *cases = SHAPES[name]
    for micro, accumulation in cases:
        plan = plan_step(setup, micro, accumulation)
        measured = measured_peak(setup, micro, accumulation)
        assert plan.peak == pytest.approx(measured, rel=0.15), (name, micro, accumulation, plan.peak_at)


def qwen3_setup(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int, dtype: str = "fp32",
                **model) -> Setup:
    return Setup(Qwen3Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                             vocab_size=vocab_size, **model), dtype, "cpu")


# arch qwen3 (RMSNorm, QK-norm, SwiGLU, GQA): its own formula, measured as gpt2's (within 2.1% in fp32
# and 4.5% in bf16 when written).
QWEN3_CASES = {
    "qwen-vocab": (qwen3_setup(2, 2, 64, 64, 151680, loss_chunk_tokens=64), 2, 2),
    "wide-body": (qwen3_setup(2, 4, 256, 64, 128), 2, 1),
    "deep-short": (qwen3_setup(4, 4, 256, 16, 4096), 2, 2),
    "bf16": (qwen3_setup(2, 4, 128, 64, 8192, dtype="bf16"), 8, 2),
}


@pytest.mark.parametrize("arch", ["gpt2", "qwen3"])
def test_muon_plan_matches_a_measured_step(arch):
    """Muon keeps one momentum per hidden-matrix entry where AdamW keeps two moments."""
    setup = dataclasses.replace(SHAPES["wide-body"][0] if arch == "gpt2" else QWEN3_CASES["wide-body"][0],
                                optimizer="muon")
    plan = plan_step(setup, 4, 2)
    assert plan.parts["optimizer"] < plan_step(dataclasses.replace(setup, optimizer="adamw"), 4, 2).parts["optimizer"]
    assert plan.peak == pytest.approx(measured_peak(setup, 4, 2), rel=0.1), plan.peak_at


@pytest.mark.parametrize("name", QWEN3_CASES)
def test_qwen3_plan_matches_a_measured_step(name):
    setup, micro, accumulation = QWEN3_CASES[name]
    plan = plan_step(setup, micro, accumulation)
    assert plan.peak == pytest.approx(measured_peak(setup, micro, accumulation), rel=0.1), plan.peak_at


def test_the_shapes_cover_different_peak_moments():
    moments = {plan_step(s, m, a).peak_at for s, *cases in SHAPES.values() for m, a in cases}
    assert len(moments) >= 3, moments


def test_plan_of_bf16_autocast_matches_a_measured_cpu_step():
    """Autocast on the CPU runs the same casts as on CUDA for this model: a check of the bf16 terms."""
    setup = gpt_setup(2, 4, 128, 64, 8192, dtype="bf16")
    assert plan_step(setup, 8, 2).peak == pytest.approx(measured_peak(setup, 8, 2), rel=0.15)


def test_activations_grow_with_the_micro_batch_and_weights_do_not():
    s = gpt_setup(12, 12, 768, 256, 151680, dtype="bf16", device="cuda")
    small, large = plan_step(s, 4, 8), plan_step(s, 8, 4)
    assert large.parts["activations"] == pytest.approx(2 * small.parts["activations"], rel=0.01)
    assert large.parts["weights"] == small.parts["weights"]
    assert large.peak > small.peak
    # 202M parameters: weights + gradients + AdamW = 16 B each
    assert small.parts["weights"] + small.parts["gradients"] + small.parts["optimizer"] == pytest.approx(
        16 * 201.7e6, rel=0.01)


def test_parse_size():
    assert parse_size("24GB") == parse_size("24GiB") == parse_size("24g") == 24 << 30
    assert parse_size("800MB") == 800 << 20 and parse_size("1.5G") == 3 << 29 and parse_size("4096") == 4096
    with pytest.raises(PlanError, match="expected a memory size"):
        parse_size("lots")


# --- micro_batch_size=auto ---------------------------------------------------------------------------

VOCAB = 384  # the bytes tokenizer's padded vocabulary, as in the trainer tests


def tiny_cfg(*extra: str):
    return apply_overrides(preset("tiny"), ["n_layer=2", "n_head=2", "n_embd=32", "block_size=32", "batch_size=8",
                                            "micro_batch_size=auto", *extra])


def free_for(micro: int, accumulation: int, cfg) -> int:
    """Free memory in which `micro` fits and twice it does not."""
    s = Setup.of(cfg, VOCAB, "fp32", "cpu")
    fits, too_big = plan_step(s, micro, accumulation).peak, plan_step(s, 2 * micro, accumulation // 2).peak
    return int((fits + too_big) / 2 / SAFETY)


def test_auto_takes_the_largest_micro_batch_that_fits_and_keeps_the_batch():
    cfg = tiny_cfg()
    assert cfg.micro_batch_size == AUTO
    plenty, choice = resolve_micro_batch(cfg, 1, CPU, VOCAB, "fp32", free_bytes=1 << 40)
    assert plenty.micro_batch_size == 8 and choice.accumulation == 1
    scarce, choice = resolve_micro_batch(cfg, 1, CPU, VOCAB, "fp32", free_bytes=free_for(2, 4, cfg))
    assert (scarce.micro_batch_size, scarce.accumulation(1), scarce.batch_size) == (2, 4, 8)
    assert choice.planned_peak <= choice.free * SAFETY and "2 x 4 accumulation" in choice.note
    two_ranks, _ = resolve_micro_batch(cfg, 2, CPU, VOCAB, "fp32", free_bytes=1 << 40)
    assert two_ranks.micro_batch_size == 4  # batch 8 over 2 ranks
    fixed = apply_overrides(cfg, ["micro_batch_size=4"])
    assert resolve_micro_batch(fixed, 1, CPU, VOCAB, "fp32", free_bytes=1) == (fixed, None)  # a number is left alone
    with pytest.raises(PlanError, match="even a micro-batch of 1 needs"):
        resolve_micro_batch(cfg, 1, CPU, VOCAB, "fp32", free_bytes=1 << 20)


def test_auto_reads_the_environment_override(monkeypatch):
    cfg = tiny_cfg()
    monkeypatch.setenv(FREE_MEMORY_ENV, str(free_for(1, 8, cfg)))
    assert resolve_micro_batch(cfg, 1, CPU, VOCAB, "fp32")[0].micro_batch_size == 1


def test_auto_on_resume_keeps_the_checkpoints_micro_batch(tmp_path):
    (tmp_path / "train_config.json").write_text(json.dumps({"config": {"micro_batch_size": 2}}))
    cfg, choice = resolve_micro_batch(tiny_cfg(), 1, CPU, VOCAB, "fp32", free_bytes=1 << 40, ckpt=tmp_path)
    assert cfg.micro_batch_size == 2 and "kept from the checkpoint" in choice.note


def test_set_accepts_auto_only_for_the_micro_batch():
    assert apply_overrides(preset("tiny"), ["micro_batch_size=AUTO"]).micro_batch_size == AUTO
    for bad in ("batch_size=auto", "micro_batch_size=0", "micro_batch_size=many"):
        with pytest.raises(ValueError):
            apply_overrides(preset("tiny"), [bad])


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_auto_run_with_scarce_memory_equals_the_same_batch_set_by_hand(pretrain_data, tmp_path, monkeypatch):
    """A run told it has little memory picks micro-batch 2 (of the preset's 4) with accumulation 4, says so,
    records it, and trains exactly like a run given micro_batch_size=2 by hand."""
    run = lambda out, micro: CliRunner().invoke(cli, ["pretrain", *tiny_args(  # noqa: E731
        "--data", str(pretrain_data), "--out", str(out), "--max-steps", "3", "--eval-every", "3",
        "--set", f"micro_batch_size={micro}")])
    monkeypatch.setenv(FREE_MEMORY_ENV, str(free_for(2, 4, tiny_cfg())))
    auto = run(tmp_path / "auto", "auto")
    assert auto.exit_code == 0, auto.output
    assert "micro_batch_size=auto: 2 x 4 accumulation" in " ".join(auto.output.split())
    info = json.loads((tmp_path / "auto" / "checkpoint" / "train_config.json").read_text())
    assert info["config"]["micro_batch_size"] == 2 and info["auto_micro_batch"]["accumulation"] == 4
    monkeypatch.delenv(FREE_MEMORY_ENV)
    by_hand = run(tmp_path / "hand", "2")
    assert by_hand.exit_code == 0, by_hand.output
    assert len(losses(tmp_path / "auto")) == 3 and losses(tmp_path / "auto") == losses(tmp_path / "hand")


def test_cuda_memory_check_resets_after_step_1_and_reports_step_2(monkeypatch):
    """The trainer's CUDA line, with the CUDA calls stubbed (no GPU here)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 << 30)
    cfg = apply_overrides(preset("mini"), ["dtype=bf16"])
    args = (cfg, 151680, 1, torch.device("cuda", 0), "bf16", True)
    assert cuda_memory_check(1, *args) is None and calls == ["reset"]
    line = cuda_memory_check(2, *args)
    planned = plan_step(Setup.of(cfg, 151680, "bf16", "cuda"), 32, 8).peak
    assert "3.00 GiB at its peak" in line and f"planned {fmt(planned)}" in line and "eager" in line
    assert cuda_memory_check(3, *args) is None and calls == ["reset"]


# --- the command ---------------------------------------------------------------------------------------

def test_plan_command_prints_the_table_and_the_largest_micro_batch():
    small = CliRunner().invoke(cli, ["plan", "--gpu-mem", "12GB"], terminal_width=160)
    large = CliRunner().invoke(cli, ["plan", "--gpu-mem", "80GB"], terminal_width=160)
    assert small.exit_code == 0 and large.exit_code == 0, small.output + large.output
    for r in (small, large):
        assert "activations" in r.output and "loss: one chunk" in r.output and "bf16 on cuda" in r.output
    pick = lambda out: int(out.split("Largest micro-batch that fits: ")[1].split()[0])  # noqa: E731
    assert pick(small.output) < pick(large.output)


def test_a_bare_gpu_mem_is_gigabytes_and_absurd_sizes_are_one_line_at_once():
    bare = CliRunner().invoke(cli, ["plan", "--gpu-mem", "24"], terminal_width=160)
    unit = CliRunner().invoke(cli, ["plan", "--gpu-mem", "24GB"], terminal_width=160)
    assert bare.exit_code == 0 and bare.output == unit.output, bare.output  # 24 GB, not 24 bytes
    assert parse_size("24", bare_unit="g") == 24 << 30 and parse_size("24") == 24
    assert parse_size("24B", bare_unit="g") == 24 and parse_size("2mb", bare_unit="g") == 2 << 20
    started = time.monotonic()
    for args in (["--gpu-mem", "0.1"], ["--gpu-mem", "9" * 400], ["--set", "batch_size=100000000"],
                 ["--set", "n_layer=1000000000"], ["--set", "block_size=1e12"], ["--vocab", str(10**18)],
                 ["--nproc", str(10**9)]):
        r = CliRunner().invoke(cli, ["plan", *args])
        assert r.exit_code != 0 and "Traceback" not in r.output, (args, r.output)
        assert len([line for line in r.output.splitlines() if line.startswith("Error")]) == 1, r.output
    assert time.monotonic() - started < 10  # by arithmetic: nothing built, no loop over a huge batch
    assert divisors(36) == [1, 2, 3, 4, 6, 9, 12, 18, 36]


def test_plan_command_errors_are_one_line():
    for args in (["--gpu-mem", "big"], ["--set", "micro_batch_size=3"], ["--preset", "huge"]):
        r = CliRunner().invoke(cli, ["plan", *args])
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert len([line for line in r.output.splitlines() if line.startswith("Error")]) == 1, r.output


# --- the compiled step -----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's own
def test_forward_and_chunked_loss_compile_with_no_graph_break():
    """fullgraph=True fails on any graph break: the chunk loop of ChunkedLinearCrossEntropy must trace.

    The tiny preset's body on the bytes vocabulary, two loss chunks and a loss mask; loss and every
    gradient as eager's. ~30-90 s on 2 cores (inductor compiles C++ kernels; cached afterwards).
    """
    m = preset("tiny").model
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(m, vocab_size=VOCAB, loss_chunk_tokens=m.block_size))  # 2 sequences = 2 chunks
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, VOCAB, (2, m.block_size), generator=g) for _ in range(2))
    mask = torch.rand(2, m.block_size, generator=g) > 0.3

    def loss_and_grads(fwd):
        model.zero_grad(set_to_none=True)
        loss_sum, n = fwd(x, y, mask)
        (loss_sum / n).backward()
        return loss_sum.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    eager_loss, eager_grads = loss_and_grads(model)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model, fullgraph=True, backend="inductor"))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
