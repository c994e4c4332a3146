"""Export to one GGUF file that llama.cpp, Ollama and LM Studio run: llama.cpp's own graph of the model's
architecture (``gpt2`` or ``qwen3``) with Qwen2's byte-level BPE vocabulary.

Why our own writer on the PyPI ``gguf`` library, not llama.cpp's ``convert_hf_to_gguf.py`` on the
Hugging Face export: the converter is not on PyPI by itself (it ships inside llama.cpp's sources),
wants its own pinned transformers, and writes the 34 padding rows of the embedding as ``[PAD…]``
tokens that llama.cpp can sample. Our models *are* llama.cpp's ``gpt2`` and ``qwen3`` graphs, so
writing them directly takes a name table and a few metadata keys per architecture
(`model.arch.GGUFMapping`: `model.archs.gpt2_formats`, `model.archs.qwen3_formats`), works offline, and the
vocabulary is the tokenizer's own:

* tensors: the architecture's names; ``token_embd`` holds only the tokenizer's rows (151,646, not the
  padded 151,680), and a tied output layer is no ``output`` tensor (llama.cpp then uses
  ``token_embd``). Our `nn.Linear` weights are (out, in), which is exactly ggml's layout, so nothing
  is transposed.
* types as llama.cpp's converter chooses them: 1-D tensors (norms, biases) and ``position_embd`` stay
  f32; the matrices are f32, f16 or q8_0 (a matrix whose rows are not a multiple of q8_0's 32-value
  blocks falls back to f16).
* tokenizer: ``gpt2`` model, ``qwen2`` pre-tokenizer, tokens spelled the GPT-2 way with their merges
  (`prep.hf_tokenizer_files.vocab_and_merges`, byte-identical to Qwen2's own files), the three special
  tokens as control tokens. A chat model (last trained on SFT data) ends its turns with
  ``<|im_end|>`` (eos and eot) and carries the ChatML template; a base model ends at ``<|endoftext|>``
  and has no template. No BOS is added, as in training.

The file is written beside its destination and renamed into place when complete; an existing file
that is not one of our GGUF exports is never replaced (and one export at a time writes a file).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import gguf
import numpy as np
import torch

from common.errors import UserError
from common.outputs import atomic_file, check_replaceable_file, output_lock
from model.adapters import load_model
from model.archs import GGUFMapping, mapping
from model.io import RunFolder, is_chat, read_model_info, resolve_model_dir, stop_ids
from model.lm import CausalLM
from model.loader import load_tokenizer_for
from model.sampling import SamplingParams
from prep.chat_template import CHATML_TEMPLATE
from prep.hf_tokenizer_files import vocab_and_merges
from prep.tokenizer import TiktokenTokenizer, Tokenizer, load_tokenizer

GGUF_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
MARKER = "zh_mini_llm.format_version"  # our key: a file that has it may be replaced by a new export
BASENAME = "zh-mini-llm"

Progress = Callable[[int, int], None]  # (bytes written, bytes in all)


class GGUFExportError(UserError, ValueError):
    """The GGUF cannot be written: a tokenizer without a GGUF vocabulary, or an output that is not ours."""


def mapping_of(model: CausalLM) -> GGUFMapping:
    return mapping(model.config, "gguf")


def gguf_tensors(model: CausalLM, n_vocab: int) -> Iterator[tuple[str, torch.Tensor]]:
    """``(llama.cpp name, fp32 tensor)`` for every tensor, in the order llama.cpp's converter writes them
    (the architecture's table: `model.arch.GGUFMapping.tensors`)."""
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    return mapping_of(model).tensors(state, model.config, n_vocab)


def storage_type(name: str, shape: tuple[int, ...], type_name: str) -> gguf.GGMLQuantizationType:
    """How a tensor is stored: llama.cpp's converter keeps vectors and positions in f32."""
    qtype = GGUF_TYPES[type_name][0]
    if len(shape) == 1 or name == "position_embd.weight":
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return gguf.GGMLQuantizationType.F16 if shape[-1] % block else qtype


def stored_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * type_size


def qwen2_ranks(tok: Tokenizer) -> dict[bytes, int]:
    """The BPE ranks behind `tok`: only Qwen2's vocabulary (however loaded, or cut to a corpus by
    ``prep vocab``) has a GGUF form here."""
    if isinstance(tok, TiktokenTokenizer):
        return tok.ranks
    qwen = load_tokenizer("qwen2")
    if tok.fingerprint != qwen.fingerprint:  # e.g. Qwen/Qwen2-0.5B from the hub: same ids, same bytes
        raise GGUFExportError(f"tokenizer {tok.name!r} has no GGUF vocabulary: only Qwen2's byte-level BPE "
                              "(the default 'qwen2' tokenizer) can be written to GGUF")
    return qwen.ranks


@lru_cache(maxsize=2)
def gguf_vocabulary(tok: Tokenizer) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """Tokens (GPT-2 spelling, then the special strings), their types, and the merges as ``"a b"``.
    Cached: rebuilding the merges takes seconds, and a session may export several types."""
    vocab, merges = vocab_and_merges(qwen2_ranks(tok))
    tokens = sorted(vocab, key=vocab.__getitem__)
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for text, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1]):
        if i != len(tokens):
            raise GGUFExportError(f"tokenizer {tok.name!r}: special token {text} has id {i}, expected {len(tokens)}")
        tokens.append(text)
        types.append(gguf.TokenType.CONTROL)
    if len(tokens) != len(tok):
        raise GGUFExportError(f"tokenizer {tok.name!r}: {len(tokens)} tokens rebuilt, but it has {len(tok)}")
    return tuple(tokens), tuple(types), tuple(f"{a} {b}" for a, b in merges)


def model_name(ckpt: str | os.PathLike, info: dict) -> str:
    """``general.name``: the project, the run and its stage ("zh-mini-llm sft", "zh-mini-llm t1 · pretrain")."""
    run, stage = RunFolder.of(resolve_model_dir(ckpt)).path.resolve().name, info["data_kind"]
    return f"{BASENAME} {run}" if run == stage else f"{BASENAME} {run} · {stage}"


def write_model_keys(writer: gguf.GGUFWriter, model: CausalLM, info: dict, n_vocab: int, name: str,
                     type_name: str) -> None:
    """What the model is: names, shape, context, file type, and our default sampling."""
    c, chat = model.config, is_chat(info)
    params = model.num_params() - (c.vocab_size - n_vocab) * c.n_embd  # the padding rows are not written
    writer.add_uint32(MARKER, 1)  # second, after general.architecture: see is_our_gguf
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_basename(BASENAME)
    writer.add_size_label(gguf.size_label(params, 0, 0, 0))
    writer.add_description(
        f"Chinese {'chat' if chat else 'base'} model, {mapping_of(model).title} architecture, {c.n_layer} layers x {c.n_embd}, "
        f"context {c.block_size} tokens, trained by zh-mini-llm ({info.get('data_kind')} step {info.get('step')})")
    writer.add_file_type(GGUF_TYPES[type_name][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    mapping_of(model).metadata(writer, c)
    d = SamplingParams()  # what `python -m model sample` does by default; llama.cpp's tools read these
    writer.add_sampling_temp(d.temperature)
    writer.add_sampling_top_k(d.top_k)
    writer.add_sampling_top_p(d.top_p)
    writer.add_sampling_penalty_repeat(d.repetition_penalty)


def write_tokenizer_keys(writer: gguf.GGUFWriter, tok: Tokenizer, chat: bool) -> None:
    """The vocabulary, merges and special ids; the ChatML template for a chat model only."""
    tokens, types, merges = gguf_vocabulary(tok)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    end = stop_ids(tok, chat)[0]  # <|im_end|> for a chat model, <|endoftext|> for a base model
    writer.add_bos_token_id(tok.eot_id)  # never added (add_bos_token false), but llama.cpp wants one
    writer.add_eos_token_id(end)
    writer.add_eot_token_id(end)
    writer.add_pad_token_id(tok.eot_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat:
        writer.add_chat_template(CHATML_TEMPLATE)


V = gguf.GGUFValueType
_SCALAR_BYTES = {V.UINT8: 1, V.INT8: 1, V.UINT16: 2, V.INT16: 2, V.UINT32: 4, V.INT32: 4, V.FLOAT32: 4,
                 V.BOOL: 1, V.UINT64: 8, V.INT64: 8, V.FLOAT64: 8}


def is_our_gguf(path: Path) -> bool:
    """Whether `path` is a GGUF file this module wrote (so a new export may replace it).

    Our marker is the second key, right after ``general.architecture``, so reading the first few keys
    is enough: `gguf.GGUFReader` would parse all 300k vocabulary strings first (half a minute)."""
    try:
        with open(path, "rb") as f:
            magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF":
                return False
            for _ in range(min(n_kv, 4)):
                (key_len,) = struct.unpack("<Q", f.read(8))
                key = f.read(min(key_len, 1024))
                (vtype,) = struct.unpack("<I", f.read(4))
                if key == MARKER.encode():
                    return True
                if vtype == V.STRING:
                    f.seek(struct.unpack("<Q", f.read(8))[0], os.SEEK_CUR)
                elif vtype in _SCALAR_BYTES:
                    f.seek(_SCALAR_BYTES[vtype], os.SEEK_CUR)
                else:
                    return False
    except (OSError, struct.error):
        return False
    return False


def write_gguf(model: CausalLM, info: dict, tok: Tokenizer, out: Path, type_name: str, name: str,
               progress: Progress | None = None) -> int:
    """Write the GGUF beside `out` and rename it into place (`common.outputs.atomic_file`); returns its size."""
    plan = []
    for tensor_name, t in gguf_tensors(model, len(tok)):
        qtype = storage_type(tensor_name, tuple(t.shape), type_name)
        plan.append((tensor_name, t, qtype, stored_nbytes(tuple(t.shape), qtype)))
    total = sum(p[3] for p in plan)
    with atomic_file(out, f"the GGUF {out}") as tmp:
        writer = gguf.GGUFWriter(tmp, mapping_of(model).architecture)
        try:
            write_model_keys(writer, model, info, len(tok), name, type_name)
            write_tokenizer_keys(writer, tok, is_chat(info))
            for tensor_name, t, qtype, nbytes in plan:
                writer.add_tensor_info(tensor_name, tuple(t.shape), np.dtype(np.float32), nbytes, raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            done = 0
            for _, t, qtype, nbytes in plan:
                writer.write_tensor_data(gguf.quants.quantize(t.numpy(), qtype))
                done += nbytes
                if progress:
                    progress(done, total)
            writer.flush()
            for f in writer.fout or []:
                os.fsync(f.fileno())
        finally:
            writer.close()
    return out.stat().st_size


def export_gguf(ckpt: str | os.PathLike, out: str | os.PathLike | None = None, type_name: str = "f16",
                progress: Progress | None = None) -> dict:
    """Write the GGUF of a run or checkpoint folder; returns a summary. Raises `GGUFExportError` (also
    when the file cannot be written: nothing is left behind) or `model.io.CheckpointError`."""
    if type_name not in GGUF_TYPES:
        raise GGUFExportError(f"type must be one of {', '.join(GGUF_TYPES)}, not {type_name!r}")
    info = read_model_info(ckpt)
    tok = load_tokenizer_for(info, str(ckpt))
    qwen2_ranks(tok)  # a tokenizer without a GGUF vocabulary is refused before the weights are read
    out = Path(out) if out is not None else RunFolder.of(resolve_model_dir(ckpt)).path / f"model-{type_name}.gguf"
    with output_lock(out, "GGUF export", lambda: check_replaceable_file(out, is_our_gguf, "GGUF")):
        model, info = load_model(ckpt, "cpu")
        name = model_name(ckpt, info)
        size = write_gguf(model, info, tok, out, type_name, name, progress)
    chat = is_chat(info)
    return {"out": str(out), "type": type_name, "bytes": size, "name": name, "chat": chat,
            "context": model.config.block_size, "n_vocab": len(tok), "stop_ids": stop_ids(tok, chat)}
