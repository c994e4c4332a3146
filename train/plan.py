"""``python -m train plan``: the memory one training step needs, and the largest micro-batch that fits.

The model of memory
===================

One optimizer step of `train.step.Stepper` in eager mode (AdamW fused, gradients clipped, the loss of
`model.archs.gpt2.ChunkedLinearCrossEntropy`), counted tensor by tensor from model/archs/gpt2.py. Notation: P
parameters (the tied V x C embedding counted once), P_lin those of the blocks' `nn.Linear` layers,
L layers, C = n_embd, H heads, V the padded vocabulary, T = block_size, B the micro-batch, N = B·T
tokens, c = min(loss_chunk_tokens, N) tokens per output-layer chunk. Sizes in bytes; ``a`` is the size
of the matmul dtype (4 in fp32, 2 under bf16/fp16 autocast), the residual stream is always fp32.

* Weights 4P, gradients 4P, AdamW's two moments 8P (all fp32; `torch.optim.AdamW` keeps ``exp_avg``
  and ``exp_avg_sq`` per parameter; the fused kernel updates in place, no per-step copies).
  Gradients exist from the backward pass to ``zero_grad(set_to_none=True)``; with accumulation > 1
  those of the earlier micro-batches are live during the later ones' forward and backward.
  Under DDP, the reducer's gradient buckets add another 4P (``gradient_as_bucket_view`` is off).
* Autocast (bf16/fp16) casts each Linear's weight and bias once per forward and keeps the copy
  (autocast's weight cache, then autograd's saved tensors) until that layer's backward: 2·P_lin.
* Activations: what autograd saves for backward (PyTorch's derivatives.yaml: a Linear saves its input,
  LayerNorm its input + mean + rstd, GELU its input, SDPA its q, k, v, output and logsumexp; views
  save nothing). Per block: LayerNorm inputs 2·4NC (+ 2·2·4N stats), LayerNorm outputs as Linear
  inputs 2·aNC, qkv 3·aNC, attention output aNC + logsumexp 4·N·H, c_fc output (GELU input) 4·aNC,
  GELU output (c_proj input) 4·aNC: 64·NC bytes in fp32, 36·NC under autocast. Korthikanti et al.
  2022, "Reducing Activation Recomputation in Large Transformer Models" (sec. 4.1), count the same
  tensors as 34·NC (+ 5·B·H·T² with a materialised attention matrix) for fp16 with 1-byte dropout
  masks; the difference is our fp32 residual stream and LayerNorm inputs, and no dropout by default.
  Flash / memory-efficient attention (CUDA; the CPU's flash kernel without dropout) never stores the
  T x T scores. The math kernel (CPU with dropout > 0) does: per block 12·B·H·T² (fp32
  probabilities, dropout noise and dropped probabilities; + 2·B·H·T² for a bf16 copy under autocast,
  whose softmax stays fp32), and q, k, v copied for its batched matmuls (3·aNC) instead of the qkv
  tensor, plus the output made contiguous (aNC). Dropout > 0 also saves a mask per residual branch
  and one after the embeddings: 1 byte on CUDA (``native_dropout``), the tensor's dtype on a CPU (a
  noise tensor). Plus ln_f's input 4NC, the final hidden states 4NC (until the loss is computed) and
  the batch (x and y int64, the mask bool).
* The output layer (`ChunkedLinearCrossEntropy`) computes the loss and both gradients in its forward:
  it keeps a V x C fp32 weight gradient (4VC) and an N x C hidden-state gradient (4NC). Per chunk
  of c tokens (one chunk at a time: the loop drops each chunk's logits before the next's exist):
  the fp32 logits 4cV plus logsumexp's ``logits - max`` temporary 4cV. Under autocast
  also the bf16 weight copy 2VC and, at the weight-gradient matmul, the bf16 gradient chunk 2cV, the
  bf16 product 2VC and its fp32 copy 4VC. Its backward scales both gradients into new tensors:
  4NC + 4VC, and the scaled weight gradient waits (autograd's input buffer) for the embedding's.
* With kd_weight > 0 (`train.distill`) the batch carries K teacher targets per token (int64 ids, uint8
  counts, then fp32 weights: 13·N·K) and each loss chunk gathers K logits per row (12·c·K), with K at
  ``model teach``'s default.
* The embedding's backward builds a dense V x C fp32 gradient (4VC) that is added to the output
  layer's before the sum becomes ``wte.weight.grad``.

The peak is the largest of five moments of a step (see `plan_step`); which one wins depends on the
shape: with a large vocabulary it is the output layer's forward or backward, with a small one it can
be the start of the blocks' backward or the embedding's backward.

A LoRA run (``lora_rank`` > 0, `model.lora`): gradients, AdamW state and the DDP buckets are those of
the adapters (A of them) only, the weights 4P + 4A; the frozen embedding and output layer have no V x C
gradient (`model.lm.ChunkedLinearCrossEntropy` skips it); each adapted layer saves B's input, N x rank.

What the model leaves out: the CUDA context, kernels and cuBLAS workspace (`CUDA_CONTEXT`, taken off
a card's size), the caching allocator's slack between reserved and allocated memory, a CPU process's
libraries and allocator fragmentation (`SAFETY` covers these), and torch.compile, which plans its own
buffers (a compiled step usually needs less). It is checked on a CPU against the peak of the tensor
bytes the allocator reports to the profiler (tests/train/test_plan.py): exact to 0.1% in fp32 for
every shape tried, `mini` at micro-batch 8 included, and to ~1% under bf16 autocast. DDP and CUDA's
kernels are not measured here: on CUDA the trainer prints ``torch.cuda.max_memory_allocated`` of its
second step (the first has no AdamW moments yet) beside the plan's figure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from common.errors import UserError
from model.distill_loss import DEFAULT_K
from model.lm import ModelConfig
from model.lora import LoraOptions, adapter_params, target_shapes
from train.checkpoint import read_run_info
from train.config import AUTO, TrainConfig
from train.lora import options_of

GiB = 1 << 30
CUDA_CONTEXT = GiB // 2  # a card's memory that its CUDA context, kernels and workspaces take first
SAFETY = 0.85  # use at most this share of the free memory: allocator slack, libraries, the plan's error
FREE_MEMORY_ENV = "TRAIN_FREE_MEMORY"  # e.g. 6GB: pretend this much memory is free (tests, shared machines)


class PlanError(UserError, ValueError):
    """Memory that cannot hold a step, or cannot be measured; the message says what to do."""


@dataclass(frozen=True)
class Setup:
    """Everything the memory of a step depends on, besides the micro-batch and the accumulation."""

    model: ModelConfig  # its architecture answers for its parameters and what a layer saves (model.lm)
    dtype: str = "fp32"  # the step's precision: fp32 | bf16 | fp16 (autocast; master weights stay fp32)
    device: str = "cpu"  # cpu | cuda | mps: decides the attention kernel and the dropout mask's size
    world_size: int = 1
    optimizer: str = "adamw"  # adamw: two fp32 moments per parameter; muon: one momentum per hidden matrix entry
    teach_k: int = 0  # teacher targets per token (kd_weight > 0, train.distill): the batch carries them
    lora: LoraOptions | None = None  # a LoRA run: only the adapters train (model.lora)

    @classmethod
    def of(cls, cfg: TrainConfig, vocab_size: int, dtype: str, device: str, world_size: int = 1) -> Setup:
        return cls(replace(cfg.model, vocab_size=vocab_size), dtype, device, world_size, cfg.optimizer,
                   teach_k=DEFAULT_K if getattr(cfg.stage, "kd_weight", 0.0) > 0 else 0, lora=options_of(cfg))

    def __getattr__(self, name: str):
        """The model's fields (block_size, n_embd, vocab_size, dropout, loss_chunk_tokens, ...) read through."""
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def amp(self) -> bool:
        return self.dtype != "fp32"

    @property
    def matmul_bytes(self) -> int:
        """Bytes per element of Linear inputs/outputs, GELU and attention tensors: the autocast dtype's."""
        return 2 if self.amp else 4

    @property
    def math_attention(self) -> bool:
        """SDPA's math kernel (the T x T scores stored): a CPU or MPS with dropout (no fused kernel for it)."""
        return self.dropout > 0 and self.device != "cuda"


@dataclass
class StepPlan:
    setup: Setup
    micro: int
    accumulation: int
    parts: dict[str, int]  # bytes of each kind of memory (not all live at once)
    moments: dict[str, list[str]]  # the parts live at each candidate peak
    peak_at: str

    @property
    def peak(self) -> int:
        return sum(self.parts[p] for p in self.moments[self.peak_at])

    @property
    def tokens_per_step(self) -> int:
        return self.micro * self.accumulation * self.setup.world_size * self.setup.block_size


def param_counts(s: Setup) -> tuple[int, int]:
    """(P, P_lin): all parameters, and those of the blocks' matmuls, by the architecture's arithmetic."""
    return s.model.param_counts()


def layer_activations(s: Setup, micro: int) -> dict[str, int]:
    """Bytes one block saves for its backward, tensor by tensor: the architecture's own formula."""
    return s.model.layer_activations(s, micro)


def optimizer_bytes(s: Setup) -> int:
    """The optimizer's state: AdamW's two fp32 moments per parameter; with Muon, one fp32 momentum
    buffer per entry of the hidden matrices (`train.optim.hidden_matrices`) and AdamW's on the rest.
    Muon's Newton-Schulz temporaries (a few copies of one matrix during the step) are left out."""
    P = trained_params(s)
    if s.optimizer != "muon":
        return 8 * P
    hidden = s.n_layer * s.model.matmul_weights_per_layer()
    return 4 * hidden + 8 * (P - hidden)


def trained_params(s: Setup) -> int:
    """Parameters with gradients and optimizer state: all of them, or a LoRA run's adapters."""
    return param_counts(s)[0] if s.lora is None else adapter_params(s.model, s.lora)


def _lora_activations(s: Setup, micro: int) -> int:
    """What a LoRA run's adapters add to one block's saved tensors: each B's input, the N x rank product
    (A's input is the base layer's, saved already)."""
    if s.lora is None:
        return 0
    per_layer = len(target_shapes(s.model, s.lora)) // s.n_layer
    return per_layer * s.matmul_bytes * micro * s.block_size * s.lora.rank


def _output_layer_chunk(s: Setup, micro: int) -> int:
    """Peak bytes of one chunk inside the output layer's forward (the V x C gradient not included)."""
    N, C, V = micro * s.block_size, s.n_embd, s.vocab_size
    c = min(s.loss_chunk_tokens, N)
    logsumexp = 4 * c * V + 4 * c * V  # fp32 logits + logsumexp's logits - max
    if not s.amp:
        return logsumexp  # the weight gradient is an in-place addmm_
    # bf16 weight copy for the whole forward + the chunk's bf16 hidden states, then the larger of the
    # logsumexp moment and the weight-gradient moment: fp32 g + bf16 g + bf16 gᵀ·h + its fp32 copy
    return 2 * V * C + 2 * c * C + max(logsumexp, 4 * c * V + 2 * c * V + 2 * V * C + 4 * V * C)


def _teacher_bytes(s: Setup, N: int) -> int:
    """The teacher targets of a micro-batch (int64 ids, uint8 counts, fp32 weights: 13 bytes per target) and,
    inside one chunk of the loss (`model.distill_loss`), the masked weights and the gathered logits."""
    if not s.teach_k:
        return 0
    c = min(s.loss_chunk_tokens, N)
    return 13 * N * s.teach_k + 12 * c * s.teach_k


def plan_step(s: Setup, micro: int, accumulation: int = 1) -> StepPlan:
    """The parts of one step's memory, and which are live at each moment where the peak can fall."""
    P, P_lin = param_counts(s)
    T = trained_params(s)  # P, or a LoRA run's adapters (then the frozen embedding and output layer get no
    N, C, V = micro * s.block_size, s.n_embd, s.vocab_size  # V x C gradients: vc = 0)
    vc = 4 * V * C if s.lora is None else 0
    layer = sum(layer_activations(s, micro).values()) + _lora_activations(s, micro)
    embed_mask = (1 if s.device == "cuda" else 4) * N * C if s.dropout > 0 else 0  # the embeddings are fp32
    parts = {
        "weights": 4 * P + (4 * T if s.lora is not None else 0),
        "gradients": 4 * T,
        "optimizer": optimizer_bytes(s),
        "ddp": 4 * T if s.world_size > 1 else 0,
        "amp_weights": 2 * P_lin if s.amp else 0,
        "activations": s.n_layer * layer + embed_mask + 4 * N * C + 17 * N,  # + ln_f input + the batch
        "hidden": 4 * N * C,
        "grad_h": 4 * N * C,
        "grad_w": vc,
        "chunk": _output_layer_chunk(s, micro),
        "scaled_grads": 4 * N * C + vc,
        "block_backward": vc + s.model.backward_peak_extra(s, micro),
        "embedding_backward": vc + 4 * N * C + (vc if accumulation > 1 else 0) if vc else 0,
        "teacher": _teacher_bytes(s, N),
    }
    held = ["weights", "optimizer", "ddp"] + (["gradients"] if accumulation > 1 else [])
    moments = {
        "output layer forward": held + ["amp_weights", "activations", "hidden", "grad_h", "grad_w", "chunk",
                                        "teacher"],
        "output layer backward": held + ["amp_weights", "activations", "grad_h", "grad_w", "scaled_grads", "teacher"],
        "last block's backward": held + ["amp_weights", "activations", "block_backward"],
        "embedding backward": ["weights", "optimizer", "ddp", "gradients", "embedding_backward"],
        "optimizer step": ["weights", "optimizer", "ddp", "gradients"],
    }
    plan = StepPlan(s, micro, accumulation, parts, moments, "")
    plan.peak_at = max(moments, key=lambda m: sum(parts[p] for p in moments[m]))
    return plan


def divisors(n: int) -> list[int]:
    """The micro-batches that divide `n`, smallest first: found up to sqrt(n), so a batch of millions is instant."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def largest_micro(s: Setup, batch_size: int, budget: int) -> StepPlan | None:
    """The plan of the largest micro-batch dividing ``batch_size / world_size`` whose step fits `budget`."""
    if batch_size % s.world_size:
        raise PlanError(f"batch_size {batch_size} is not a multiple of {s.world_size} process(es)")
    per_rank = batch_size // s.world_size
    for micro in reversed(divisors(per_rank)):
        plan = plan_step(s, micro, per_rank // micro)
        if plan.peak <= budget:
            return plan
    return None


MAX_MEMORY = 1 << 50  # 1 PiB: more is a typo, not a machine


def parse_size(text: str, bare_unit: str = "") -> int:
    """Bytes of ``24GB``, ``24GiB``, ``1.5G`` or ``800MB``; GB = GiB, as GPU makers count. A bare number is
    in `bare_unit` (``g``: ``--gpu-mem 24`` is 24 GB, never 24 bytes; "": bytes, as TRAIN_FREE_MEMORY)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise PlanError(f"expected a memory size such as 24GB or 800MB, got {text!r}")
    unit = m.group(2) or ("" if m.group(3) else bare_unit)  # "24B" says bytes; only "24" takes bare_unit
    n = float(m.group(1)) * 1024 ** " kmgt".index(unit or " ")
    if not n <= MAX_MEMORY:  # (also an overflow to infinity)
        raise PlanError(f"{text!r} is more than 1 PiB of memory; give a size such as 24GB")
    return int(n)


def fmt(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / (1 << 20):.1f} MiB"


def free_memory(device: torch.device) -> int:
    """Bytes free for training on `device` now (`FREE_MEMORY_ENV` overrides, e.g. to simulate a small card)."""
    if os.environ.get(FREE_MEMORY_ENV):
        return parse_size(os.environ[FREE_MEMORY_ENV])
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]  # after the CUDA context, which the plan leaves out
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise PlanError(f"cannot tell how much memory is free here; set micro_batch_size to a number, or "
                    f"{FREE_MEMORY_ENV}=8GB")


@dataclass
class AutoChoice:
    """What ``micro_batch_size=auto`` chose, and why (printed at run start, saved in train_config.json)."""

    micro: int
    accumulation: int
    planned_peak: int | None  # None when kept from the checkpoint
    free: int | None
    note: str

    def to_dict(self) -> dict:
        return {"micro_batch_size": self.micro, "accumulation": self.accumulation,
                "planned_peak_bytes": self.planned_peak, "free_bytes": self.free, "note": self.note}


def _min_over_ranks(value: int, device: torch.device) -> int:
    """Every rank must pick the same micro-batch: plan for the rank with the least free memory."""
    if not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def resolve_micro_batch(cfg: TrainConfig, world_size: int, device: torch.device, vocab_size: int, dtype: str,
                        free_bytes: int | None = None, ckpt: Path | None = None
                        ) -> tuple[TrainConfig, AutoChoice | None]:
    """Replace ``micro_batch_size=auto`` by the largest micro-batch whose step fits `SAFETY` x the free memory.

    The effective batch (`batch_size`) stays; accumulation makes up the rest. A resumed run keeps its
    checkpoint's micro-batch, so it continues with the very batches it would have seen. Call it before
    the model is on the device (the free memory must still include the room for its weights).
    """
    if cfg.micro_batch_size != AUTO:
        return cfg, None
    per_rank = cfg.batch_size // world_size
    if ckpt is not None:
        kept = (read_run_info(ckpt).get("config") or {}).get("micro_batch_size")
        if isinstance(kept, int) and cfg.batch_size % world_size == 0 and per_rank % kept == 0:
            note = f"micro_batch_size=auto: {kept} x {per_rank // kept} accumulation, kept from the checkpoint"
            return replace(cfg, micro_batch_size=kept), AutoChoice(kept, per_rank // kept, None, None, note)
    free = _min_over_ranks(free_memory(device) if free_bytes is None else free_bytes, device)
    setup = Setup.of(cfg, vocab_size, dtype, device.type, world_size)
    plan = largest_micro(setup, cfg.batch_size, int(free * SAFETY))
    if plan is None:
        need = plan_step(setup, 1, max(per_rank, 1)).peak
        raise PlanError(f"micro_batch_size=auto: even a micro-batch of 1 needs {fmt(need)}, but {fmt(free)} is "
                        f"free on {device} (using {SAFETY:.0%} of it); try dtype bf16, a smaller "
                        "loss_chunk_tokens, a smaller model or more processes")
    note = (f"micro_batch_size=auto: {plan.micro} x {plan.accumulation} accumulation x {world_size} process(es) "
            f"= batch {cfg.batch_size}; plan {fmt(plan.peak)} per step, {fmt(free)} free on {device}")
    return replace(cfg, micro_batch_size=plan.micro), AutoChoice(plan.micro, plan.accumulation, plan.peak, free, note)


def check_block(block_size: int, splits: Sequence, paths: Sequence) -> None:
    """Refuse a block longer than any window of the data: a window is block_size + 1 tokens of one train
    split, so beyond the largest split's tokens - 1 every position is padding, paid for in time and memory."""
    longest = max((split.n_tokens - 1, str(path)) for split, path in zip(splits, paths, strict=True))
    if block_size > longest[0]:
        raise PlanError(f"block_size {block_size:,} is longer than any window of the data: {longest[1]} holds "
                        f"{longest[0] + 1:,} training tokens, so a block of at most {longest[0]:,} can be filled; "
                        "lower block_size (--set block_size=N, at most that) or train on more data")


def check_step_fits(cfg: TrainConfig, dtype: str, device: torch.device, world_size: int) -> None:
    """Refuse before the first step a step whose memory (`plan_step`: weights, gradients, optimizer state
    AND the activations of the micro-batch) exceeds the free memory of `device`."""
    setup = Setup.of(cfg, cfg.model.vocab_size, dtype, device.type, world_size)
    plan = plan_step(setup, cfg.micro_batch_size, cfg.accumulation(world_size))
    free = free_memory(device)
    if plan.peak > free:
        held = ", ".join(f"{name} {fmt(plan.parts[name])}" for name in plan.moments[plan.peak_at] if plan.parts[name])
        raise PlanError(f"a step needs {fmt(plan.peak)} at its peak ({plan.peak_at}: {held}), but {fmt(free)} is "
                        f"free on {device}; lower micro_batch_size (or set it to auto), block_size or the model "
                        "size; `make plan` shows what fits")


def cuda_memory_check(steps_run: int, cfg: TrainConfig, vocab_size: int, world_size: int, device: torch.device,
                      dtype: str, compiled: bool) -> str | None:
    """Call after each of the first steps on CUDA: after the 1st, resets the peak counter; after the 2nd,
    returns that step's measured peak beside the plan's figure (the 1st has no AdamW moments yet, and
    pays for compilation)."""
    if steps_run == 1:
        torch.cuda.reset_peak_memory_stats(device)
    if steps_run != 2:
        return None
    setup = Setup.of(cfg, vocab_size, dtype, device.type, world_size)
    plan = plan_step(setup, cfg.micro_batch_size, cfg.accumulation(world_size))
    measured = torch.cuda.max_memory_allocated(device)
    eager = "; planned for eager mode" if compiled else ""
    return (f"memory of step 2: {fmt(measured)} at its peak (torch.cuda.max_memory_allocated), planned "
            f"{fmt(plan.peak)} by `train plan` ({measured / plan.peak:.0%}{eager})")
