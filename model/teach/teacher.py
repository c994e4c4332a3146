"""A teacher (or a reference model): any causal LM of Qwen2's vocabulary, loaded for scoring and sampling.

A teacher is a run or checkpoint of this project (``model.json``), a Hugging Face model folder, or a hub
name (``Qwen/Qwen2.5-0.5B``; fetched only because the user typed it), loaded by transformers'
``AutoModelForCausalLM`` and never with ``trust_remote_code``. It runs on the best device present
(`model.runtime.pick_device`: cuda, then mps, then cpu).

Its ids must mean what the data's ids mean, so its tokenizer is checked: a probe text (Chinese, ASCII,
digits and a special string typed as text) must encode to exactly Qwen2's ids and its three specials must
be Qwen2's (the teacher's ids are Qwen2's; a cut data vocabulary is mapped, `model.teach.vocab_map`), or,
failing that, to exactly the data folder's own ids (a teacher trained on the same cut vocabulary).
Anything else is a one-line error. A reference model for selection only scores text, so it may have
any tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError
from common.paths import expand_user, looks_like_hub_name
from model.io import INFO_NAME
from model.loader import load_on_device, load_tokenizer_for
from model.measure.bpb import ScoredModel, hf_scored_model, load_hf_causal_lm
from model.scoring import GPTBackend
from prep.tokenizer import SPECIAL_TOKENS, Tokenizer, load_tokenizer

PROBE = "数学是研究数量、结构以及空间等概念的学科。The teacher: 1,234 tokens!\n<|im_start|>user"
QWEN2 = "qwen2"  # the teacher's ids are Qwen2's
DATA = "data"  # the teacher's ids are the data folder's own (the same cut vocabulary)


class TeacherError(UserError, ValueError):
    """A teacher or reference model that cannot be used as asked."""


@dataclass
class Teacher:
    """A loaded model: text scoring (`scored`) and full next-token logits (`logits`), and whose ids it speaks."""

    name: str
    scored: ScoredModel
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, T) ids, (B,) lengths -> (B, T, V) fp32
    device: torch.device
    n_ids: int  # ids with a meaning (the tokenizer's length); output rows past it are padding
    vocab: str  # QWEN2 or DATA
    record: dict  # what meta.json records of it

    @property
    def context(self) -> int:
        return self.scored.context


def load_model(spec: str | os.PathLike, device: str = "auto", dtype: str = "auto") -> tuple[ScoredModel, object]:
    """``(ScoredModel, tokenizer-like)`` of a run/checkpoint folder, a Hugging Face folder or a hub name."""
    path = Path(expand_user(str(spec)))
    if (path / INFO_NAME).is_file() or (path / "checkpoint" / INFO_NAME).is_file():
        model, info, prec = load_on_device(path, device, dtype)
        tok = load_tokenizer_for(info, str(path))
        backend = GPTBackend(model, prec.autocast)
        return ScoredModel(str(path), "zh-mini-llm", backend, tok.encode, tok.eot_id, model.config.block_size), tok
    if (path / "config.json").is_file():
        tok, model = load_hf_causal_lm(path, device, dtype)
    elif looks_like_hub_name(str(spec), ()):
        tok, model = load_hf_causal_lm(str(spec), device, dtype, local_only=False)
    elif path.exists():
        raise TeacherError(f"{path}: neither {INFO_NAME} (a run of this project) nor config.json (Hugging Face)")
    else:
        raise TeacherError(f"{path}: no such model folder (give a run folder, a Hugging Face folder or owner/name)")
    return hf_scored_model(str(spec), tok, model), tok


def load_teacher(spec: str | os.PathLike, data_tokenizer: Tokenizer, device: str = "auto",
                 dtype: str = "auto") -> Teacher:
    """Load `spec` and check that its ids are Qwen2's or the data's (see the module doc)."""
    scored, tok = load_model(spec, device, dtype)
    vocab = _vocabulary(str(spec), tok, data_tokenizer)
    backend = scored.backend
    model = backend.model

    def logits(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded rows `x` of `lengths` tokens: causal attention never lets padding change them."""
        with torch.no_grad():
            if scored.kind == "zh-mini-llm":  # our model: fp32 logits under its autocast
                with backend.autocast():
                    return model(x)
            mask = torch.arange(x.size(1), device=x.device)[None, :] < lengths[:, None]
            return model(input_ids=x, attention_mask=mask.long()).logits.float()

    record = {"name": str(spec), "kind": scored.kind, "vocabulary": vocab, "context": scored.context,
              "parameters": sum(p.numel() for p in model.parameters())}
    return Teacher(str(spec), scored, logits, backend.device, len(tok), vocab, record)


def _vocabulary(name: str, tok, data_tokenizer: Tokenizer) -> str:
    """QWEN2 or DATA: whose ids the teacher's are, by the probe; a one-line error for anything else."""
    ids, specials = _probe(tok)
    qwen = load_tokenizer("qwen2")
    if (ids, specials) == (qwen.encode(PROBE), [qwen.special_tokens[t] for t in SPECIAL_TOKENS]):
        return QWEN2
    if (ids, specials) == (data_tokenizer.encode(PROBE), [data_tokenizer.special_tokens[t] for t in SPECIAL_TOKENS]):
        return DATA
    raise TeacherError(f"{name}: its tokenizer is not Qwen2's (nor the data's {data_tokenizer.name!r}): a probe "
                       f"text encodes to other ids; a teacher must speak Qwen2's vocabulary")


def _probe(tok) -> tuple[list[int], list[int | None]]:
    """The probe's ids and the three specials' ids under `tok` (ours or a Hugging Face tokenizer)."""
    if isinstance(tok, Tokenizer):
        return tok.encode(PROBE), [tok.special_tokens[t] for t in SPECIAL_TOKENS]
    ids = tok(PROBE, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return list(ids), [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
