"""Log-likelihoods of token sequences, in batches: what benchmarks and bits per byte are made of.

A `Row` is one forward pass over ``ids[:-1]`` that predicts ``ids[1:]``, of which only the last
`n_scored` predictions count (the earlier tokens are context). `score_rows` returns, per row, the
summed log-probability of its scored tokens and whether each of them was the most likely token.

Rows with the same input (the four answers "A", "B", "C", "D" after one multiple-choice question)
share one forward pass. Inputs are run longest first, right-padded: attention is causal, so padding
after a row's last token never changes its logits.

Two backends give log-probabilities at chosen positions:

* `GPTBackend`, our model: the hidden states of the whole batch, but the 151,680-wide output layer
  only at the scored positions, a chunk at a time (a question of 200 tokens scores one);
* `HFBackend`, any ``AutoModelForCausalLM``: its own forward, logits of every position.

Both include every row of the output layer in the softmax (our padded vocabulary rows too, as
training and the Hugging Face export do), so a checkpoint and its export give the same figures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

OUTPUT_CHUNK = 1024  # scored positions per output-layer matmul: 1024 x 151,680 fp32 logits = 620 MB


@dataclass(frozen=True)
class Row:
    """Predict ``ids[1:]`` from ``ids[:-1]``; the last `n_scored` predictions count (1 <= n_scored < len(ids))."""

    ids: tuple[int, ...]
    n_scored: int


class Backend(Protocol):
    device: torch.device

    def logprobs(self, x: torch.Tensor, lengths: list[int], rows: torch.Tensor, cols: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For inputs `x` (B, T) right-padded to `lengths`: log p(targets[i] | x[rows[i], :cols[i] + 1])
        and whether targets[i] is the argmax there, both (N,)."""
        ...


class GPTBackend:
    """Our model (any architecture), with the output layer computed only where something is scored."""

    def __init__(self, model, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.model = model
        self.autocast = autocast
        self.device = next(model.parameters()).device

    def logprobs(self, x, lengths, rows, cols, targets):
        with torch.no_grad(), self.autocast():
            h = self.model.hidden_states(x)[rows, cols]
            weight = self.model.output_weight()
            out_lp, out_top = [], []
            for s in range(0, h.size(0), OUTPUT_CHUNK):
                logits = F.linear(h[s : s + OUTPUT_CHUNK], weight).float()
                lp, top = _pick(logits, targets[s : s + OUTPUT_CHUNK])
                out_lp.append(lp)
                out_top.append(top)
        return torch.cat(out_lp), torch.cat(out_top)


class HFBackend:
    """A Hugging Face causal LM (anything ``AutoModelForCausalLM`` loads), run as it is.

    Its forward pass builds logits at every position, so a batch is run a few rows at a time to keep
    them under `LOGITS_BYTES` (8 windows of 2,048 tokens would be 10 GB for Qwen2's vocabulary).
    """

    LOGITS_BYTES = 2 << 30

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab = model.get_output_embeddings().weight.shape[0]

    def logprobs(self, x, lengths, rows, cols, targets):
        step = max(1, self.LOGITS_BYTES // (x.size(1) * self.vocab * 4))
        lp = torch.empty(len(rows), dtype=torch.float32, device=x.device)
        top = torch.empty(len(rows), dtype=torch.bool, device=x.device)
        for s in range(0, x.size(0), step):
            part = (rows >= s) & (rows < s + step)
            sub = x[s : s + step]
            mask = torch.arange(sub.size(1), device=x.device)[None, :] < torch.tensor(lengths[s : s + step],
                                                                                    device=x.device)[:, None]
            with torch.no_grad():
                logits = self.model(input_ids=sub, attention_mask=mask.long()).logits
                lp[part], top[part] = _pick(logits[rows[part] - s, cols[part]].float(), targets[part])
        return lp, top


def _pick(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) (fp32 logits in, PyTorch's fused log-softmax) and whether the target is the argmax."""
    lp = -F.cross_entropy(logits, targets, reduction="none")
    return lp, logits.argmax(dim=-1) == targets


def score_rows(backend: Backend, rows: Sequence[Row], batch_size: int,
               on_batch: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """``(sum of log-probs, all greedy)`` of every row's scored tokens, in the order of `rows`.

    `batch_size` counts distinct inputs per forward pass; `on_batch(n)` is told how many rows each
    pass finished (for a progress bar).
    """
    by_input: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if not 1 <= row.n_scored < len(row.ids):
            raise ValueError(f"row {i}: n_scored={row.n_scored} with {len(row.ids)} ids")
        by_input.setdefault(row.ids[:-1], []).append(i)
    inputs = sorted(by_input, key=len, reverse=True)  # stable: equal lengths keep their first-seen order
    results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        members = [i for inp in batch for i in by_input[inp]]
        _score_batch(backend, batch, [[rows[i] for i in by_input[inp]] for inp in batch], members, results)
        if on_batch:
            on_batch(len(members))
    return results


def _score_batch(backend: Backend, inputs: list[tuple[int, ...]], groups: list[list[Row]], members: list[int],
                 results: list[tuple[float, bool]]) -> None:
    """One forward pass over `inputs`; `groups[b]` are the rows that share input b."""
    lengths = [len(inp) for inp in inputs]
    x = torch.zeros(len(inputs), max(lengths), dtype=torch.long)
    for b, inp in enumerate(inputs):
        x[b, : len(inp)] = torch.tensor(inp)
    rows, cols, targets, owner = [], [], [], []
    k = 0
    for b, group in enumerate(groups):
        for row in group:
            n, L = row.n_scored, lengths[b]
            rows += [b] * n
            cols += range(L - n, L)
            targets += row.ids[-n:]
            owner += [k] * n
            k += 1
    dev = backend.device
    lp, top = backend.logprobs(x.to(dev), lengths, torch.tensor(rows, device=dev), torch.tensor(cols, device=dev),
                               torch.tensor(targets, device=dev))
    owner_t = torch.tensor(owner, device=dev)
    sums = torch.zeros(k, dtype=torch.float64, device=dev).index_add_(0, owner_t, lp.double())
    misses = torch.zeros(k, dtype=torch.long, device=dev).index_add_(0, owner_t, (~top).long())
    for j, (s, m) in enumerate(zip(sums.tolist(), misses.tolist(), strict=True)):
        results[members[j]] = (s, m == 0)
