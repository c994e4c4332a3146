"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p, seeded draws.

The order is the one Hugging Face `generate` uses (penalty, then temperature, then top-k, then top-p),
so the same options mean the same thing in ``python -m model sample`` and on an exported model.
Temperature 0 is greedy decoding (argmax), and so is any temperature below `GREEDY_BELOW` (its limit,
and dividing logits by 1e-45 would overflow); `top_k=1` is greedy as well, whatever the temperature.

Top-k runs first and top-p then sorts only the k survivors, so a step costs one `topk` over the
151,680-wide vocabulary, not a full sort. Draws use a caller-owned `torch.Generator`, so a seed gives
the same text every run, and several samples of one prompt are rows of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-5
# The working range of every value a user can type, checked wherever one is typed (the CLIs' options,
# the server's request fields, `SamplingParams` itself). Inside it each step's arithmetic stays finite:
# logits (fp32, see `sample_next`) times at most 100 or divided by at least 1e-5 are far from overflow.
# Outside it a value is either meaningless (NaN, infinity) or breaks the batched step for everyone.
MAX_TEMPERATURE = 100.0
PENALTY_RANGE = (0.01, 100.0)
MAX_NEW_TOKENS = 1 << 20  # its token buffer is allocated up front: 8 MB a sample at this limit
MAX_SAMPLES = 256  # samples of one prompt are rows of one batch, each with its own cache


@dataclass
class SamplingParams:
    """What ``python -m model sample`` / ``chat`` take on the command line."""

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 makes tokens already in the context less likely
    seed: int = 1337
    num_samples: int = 1

    def __post_init__(self) -> None:
        low, high = PENALTY_RANGE
        checks = [  # closed ranges: NaN fails every comparison, infinity the upper bound
            (1 <= self.max_new_tokens <= MAX_NEW_TOKENS, f"max_new_tokens must be from 1 to {MAX_NEW_TOKENS}"),
            (0 <= self.temperature <= MAX_TEMPERATURE, f"temperature must be from 0 (greedy) to {MAX_TEMPERATURE:g}"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (low <= self.repetition_penalty <= high, f"repetition_penalty must be from {low:g} to {high:g} (1 = off)"),
            (1 <= self.num_samples <= MAX_SAMPLES, f"num_samples must be from 1 to {MAX_SAMPLES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (as in Hugging Face): a seen token's logit is divided by `penalty` if positive,
    multiplied if negative, so it always becomes less likely. `seen` is a (B, V) bool mask."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from `logits` (B, V) already restricted to real (unpadded) ids."""
    logits = logits.float()  # fp16 logits times a penalty of 100 could overflow; fp32 cannot
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if 0 < params.top_k < logits.size(-1):
        vals, ids = torch.topk(logits, params.top_k, dim=-1)  # sorted, largest first
    else:
        vals, ids = torch.sort(logits, dim=-1, descending=True) if params.top_p < 1.0 else (logits, None)
    if params.top_p < 1.0:
        probs = torch.softmax(vals, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = probs.cumsum(dim=-1) - probs >= params.top_p
        vals = vals.masked_fill(drop, float("-inf"))
    choice = torch.multinomial(torch.softmax(vals, dim=-1), 1, generator=generator).squeeze(-1)
    return choice if ids is None else ids.gather(-1, choice[:, None]).squeeze(-1)
