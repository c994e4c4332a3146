"""Validation: mean loss and bits per byte over given windows, and a short sample from a fixed prompt.

`evaluate_windows` is what the trainer runs every `eval_every` steps (on a fixed set of blocks) and
what ``train eval`` runs over a whole split (`data.tiling_starts`). Bits per byte make runs with
different tokenizers comparable: ``bpb = loss / ln 2 * tokens / bytes``, using the split's token and
UTF-8 byte counts from ``meta.json`` (for SFT its *target* tokens and bytes, the ones the loss is on).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from model.generate import Engine, stream_text
from model.io import stop_ids
from model.lm import CausalLM
from model.sampling import SamplingParams
from prep.chat_template import render_prompt
from prep.tokenfile import Split
from train.data import read_windows
from train.mixture import Mixture, mixture_figures


@torch.no_grad()
def evaluate_windows(model: CausalLM, split: Split, starts: np.ndarray, block_size: int, batch_size: int,
                     device: torch.device, autocast=contextlib.nullcontext, rank: int = 0,
                     world_size: int = 1) -> tuple[float, float]:
    """``(loss_sum, n_targets)`` over this rank's share (``starts[rank::world_size]``) of the windows.

    Sum the pair over ranks and divide for the mean loss in nats per target token.
    """
    was_training = model.training
    model.eval()
    loss_sum = count = 0.0
    mine = starts[rank::world_size]
    for i in range(0, len(mine), batch_size):
        x, y, mask = (torch.from_numpy(a).to(device) for a in read_windows(split, mine[i : i + batch_size], block_size))
        with autocast():
            s, n = model(x, y, mask)
        loss_sum += s.item()  # python floats: float64 sums, whatever the device
        count += n.item()
    model.train(was_training)
    return loss_sum, count


def bits_per_byte(mean_loss: float, split: Split) -> float | None:
    """Bits per UTF-8 byte of the trained text, or None when meta.json lacks the byte counts."""
    stats = split.stats
    tokens, n_bytes = (stats.get("target_tokens"), stats.get("target_bytes")) if split.mask is not None else (
        stats.get("tokens"), stats.get("bytes"))
    if not tokens or not n_bytes:
        return None
    return mean_loss / math.log(2) * tokens / n_bytes


def val_record(step: int, rows: list[list[float]], splits: list[Split], mixture: Mixture, stage) -> dict | None:
    """An eval's metrics.jsonl record from each folder's summed ``[loss, count, *stage.val_metrics]``, or None
    when no block held a target. A mixture's val_loss / val_bpb weight-average the folders' (`train.mixture`)."""
    losses = [row[0] / row[1] if row[1] else None for row in rows]
    if all(loss is None for loss in losses):
        return None
    bpbs = [None if loss is None or not stage.bits_per_byte else bits_per_byte(loss, split)
            for loss, split in zip(losses, splits, strict=True)]
    val_loss, val_bpb = mixture_figures(losses, bpbs, mixture.weights)
    count = sum(row[1] for row in rows)
    record = {"step": step, "val_loss": val_loss, "val_bpb": val_bpb,
              **{f"val_{name}": sum(row[2 + j] for row in rows) / count for j, name in enumerate(stage.val_metrics)}}
    if len(losses) > 1:
        record["sources"] = {name: {"val_loss": loss, "val_bpb": bpb}
                             for name, loss, bpb in zip(mixture.names, losses, bpbs, strict=True)}
    return record


def prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    """The sample prompt's ids: raw text for pretraining, a ChatML user turn + assistant header for SFT."""
    if chat:
        return render_prompt([("user", prompt)], tokenizer)
    return tokenizer.encode(prompt)


def sample_text(model: CausalLM, tokenizer, prompt: str, chat: bool, max_new_tokens: int,
                autocast=contextlib.nullcontext, seed: int = 0) -> str:
    """A seeded sample (temperature 0.8, top-50) continuing the prompt, up to the model's stop token.

    Sampled rather than greedy: greedy decoding of a young model repeats its most frequent token
    (``，，，，``), while a sample shows which words it has picked up. The fixed seed makes it the same
    for the same weights, so runs (and resumed runs) can be compared. Decoded as ``make sample`` does
    (`model.generate.stream_text`), minus a character left incomplete by the token limit.
    """
    ids = prompt_ids(tokenizer, prompt, chat)
    if not ids:
        return ""
    was_training = model.training
    model.eval()
    engine = Engine(model, len(tokenizer), stop_ids(tokenizer, chat), autocast)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=seed)
    tokens = engine.generate(ids, params)[0].tokens
    model.train(was_training)
    return "".join(stream_text(tokens, tokenizer, final=False))
