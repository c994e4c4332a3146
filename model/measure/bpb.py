"""Bits per byte of any causal LM on the same raw text: our checkpoints and Hugging Face model folders.

Loss per token depends on the tokenizer (a token of Qwen2 holds ~1.5 Chinese characters, a byte-level
token a third of one), so models with different tokenizers are compared on the text's UTF-8 bytes:

    bits per byte = (sum over scored tokens of -log p(token | context)) / ln 2 / (UTF-8 bytes of the text)

What is scored, the same for both kinds of model:

* Each document (`model.measure.texts`) is tokenized on its own, with no special tokens added.
* Its first token is predicted from the model's document-start token: ``<|endoftext|>`` for our
  checkpoints (training data separates documents with it) and, for a Hugging Face model, the
  ``bos_token_id`` of its config, else its tokenizer's BOS, else its EOS. A model that has none
  cannot predict a first token: it is left unscored (counted in ``unscored_tokens``; its bytes still
  count, so such a model is not flattered by more than one token per document).
* Every other token is scored exactly once. A document longer than the context is scored in
  windows of `context` tokens that start `stride` tokens apart; each window scores only the tokens
  the previous one did not, so every token after the first window sees at least
  ``context - stride`` tokens of context. Nothing is appended: no end-of-text token is scored.

The figure is deterministic (fixed order, fixed windows) and the same for a checkpoint and its
``make export`` (same ids, start token, context and softmax over the same output rows).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from model.io import INFO_NAME
from model.loader import load_on_device, load_tokenizer_for
from model.measure.texts import read_documents
from model.runtime import TORCH_DTYPES, pick_device, precision
from model.scoring import Backend, GPTBackend, HFBackend, Row, score_rows
from prep.records import first_line
from prep.tokenizer import hub_offline

HF_CONTEXT_CAP = 2048  # default window for Hugging Face models with longer contexts (logits cost memory)


class BpbError(UserError, ValueError):
    """A model or option that cannot be scored as asked."""


@dataclass
class ScoredModel:
    """What scoring needs of a model, whatever its kind."""

    name: str
    kind: str  # "zh-mini-llm" or "huggingface"
    backend: Backend
    encode: Callable[[str], list[int]]
    start_id: int | None  # the token a document is predicted from, if the model has one
    context: int  # most tokens the model reads at once


def windows(tokens: list[int], start_id: int | None, context: int, stride: int) -> list[Row]:
    """The rows that score every token of a document once (the first only from `start_id`)."""
    seq = ([start_id] if start_id is not None else []) + tokens
    rows, begin, scored_to = [], 0, 0  # seq[1 : scored_to + 1] are scored so far
    while scored_to < len(seq) - 1:
        end = min(begin + context + 1, len(seq))
        rows.append(Row(tuple(seq[begin:end]), end - 1 - scored_to))
        scored_to = end - 1
        begin += stride
    return rows


def load_scored_model(path: str | os.PathLike, device: str = "auto", dtype: str = "auto") -> ScoredModel:
    """Our run or checkpoint folder (``model.json``) or a Hugging Face model folder (``config.json``)."""
    path = Path(path)
    if (path / INFO_NAME).is_file() or (path / "checkpoint" / INFO_NAME).is_file():
        model, info, prec = load_on_device(path, device, dtype)
        tok = load_tokenizer_for(info, str(path))
        return ScoredModel(str(path), "zh-mini-llm", GPTBackend(model, prec.autocast), tok.encode, tok.eot_id,
                           model.config.block_size)
    if (path / "config.json").is_file():
        return _load_hf(path, device, dtype)
    if not path.exists():
        raise BpbError(f"{path}: no such folder (give a run folder, a checkpoint folder or a downloaded "
                       "Hugging Face model folder; hub names are not fetched)")
    raise BpbError(f"{path}: neither {INFO_NAME} (ours) nor config.json (Hugging Face) is here")


def load_hf_causal_lm(spec: str | os.PathLike, device: str, dtype: str, local_only: bool = True):
    """``(tokenizer, model on the device in eval mode)`` from a local folder, or a hub name where the user
    typed one (`local_only` False), never running code the folder names (trust_remote_code off)."""
    import transformers

    dev = pick_device(device)
    weights_dtype = TORCH_DTYPES[precision(dev, dtype).name]  # the Hugging Face model runs in it, no autocast
    dtype_key = "torch_dtype" if transformers.__version__.startswith("4.") else "dtype"
    kw = {"local_files_only": local_only, "trust_remote_code": False}
    try:
        with hub_offline() if local_only else contextlib.nullcontext():  # a local folder: nothing to ask the hub
            tok = transformers.AutoTokenizer.from_pretrained(spec, **kw)
            model = transformers.AutoModelForCausalLM.from_pretrained(spec, **kw, **{dtype_key: weights_dtype})
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean "cannot load"
        raise BpbError(f"{spec}: cannot load as a Hugging Face causal LM: {first_line(e)}") from None
    tok.model_max_length = 1 << 62  # we cut windows ourselves; silence the "too long" warning
    return tok, model.to(dev).eval()


def hf_scored_model(name: str, tok, model) -> ScoredModel:
    """A loaded Hugging Face model as scoring sees it: its own tokenizer, start token and context."""
    config = model.config
    context = next((v for v in (getattr(config, k, None) for k in ("max_position_embeddings", "n_positions", "n_ctx"))
                    if isinstance(v, int) and v > 0), HF_CONTEXT_CAP)

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    return ScoredModel(name, "huggingface", HFBackend(model), encode, _hf_start_id(config, tok), context)


def _load_hf(folder: Path, device: str, dtype: str) -> ScoredModel:
    return hf_scored_model(str(folder), *load_hf_causal_lm(folder, device, dtype))


def _hf_start_id(config, tok) -> int | None:
    for value in (config.bos_token_id, tok.bos_token_id, tok.eos_token_id, config.eos_token_id):
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            return value
    return None


def bits_per_byte(scored: ScoredModel, text: str | os.PathLike, context: int | None = None,
                  stride: int | None = None, batch_size: int = 8, progress=None) -> dict:
    """Score every document of `text`; returns the totals and the figures (see the module doc).

    `context` defaults to the model's own (at most `HF_CONTEXT_CAP` for a Hugging Face model),
    `stride` to half of it. `progress(raw_bytes_done)` is called after each scored group.
    """
    limit = scored.context
    context = context or (min(limit, HF_CONTEXT_CAP) if scored.kind == "huggingface" else limit)
    if not 1 <= context <= limit:
        raise BpbError(f"context must be between 1 and the model's {limit} tokens, not {context}")
    stride = stride or max(1, context // 2)
    if not 1 <= stride <= context:
        raise BpbError(f"stride must be between 1 and the context ({context}), not {stride}")
    totals = {"documents": 0, "bytes": 0, "tokens": 0, "unscored_tokens": 0, "nats": 0.0}
    pending: list[Row] = []
    pending_raw = 0

    def flush() -> None:
        nonlocal pending, pending_raw
        scores = score_rows(scored.backend, pending, batch_size)
        totals["nats"] -= math.fsum(s for s, _ in scores)
        if progress:
            progress(pending_raw)
        pending, pending_raw = [], 0

    for doc in read_documents(text):
        tokens = scored.encode(doc.text)
        rows = windows(tokens, scored.start_id, context, stride)
        totals["documents"] += 1
        totals["bytes"] += doc.n_bytes
        totals["tokens"] += sum(r.n_scored for r in rows)
        totals["unscored_tokens"] += len(tokens) - sum(r.n_scored for r in rows)
        pending += rows
        pending_raw += doc.raw_bytes
        if len(pending) >= 16 * batch_size:
            flush()
    if pending or pending_raw:
        flush()
    return _summary(scored, text, context, stride, totals)


def _summary(scored: ScoredModel, text, context: int, stride: int, totals: dict) -> dict:
    if not totals["tokens"]:
        raise BpbError(f"{text}: no token could be scored (no non-empty document, or only one-token "
                       "documents and a model without a start token)")
    return {
        "model": scored.name,
        "kind": scored.kind,
        "text": str(text),
        **{k: totals[k] for k in ("documents", "bytes", "tokens", "unscored_tokens")},
        "loss_per_token": totals["nats"] / totals["tokens"],
        "bits_per_byte": totals["nats"] / math.log(2) / totals["bytes"],
        "bytes_per_token": totals["bytes"] / (totals["tokens"] + totals["unscored_tokens"]),
        "context": context,
        "stride": stride,
        "start_token": scored.start_id,
    }
