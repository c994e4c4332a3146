"""Export to a Hugging Face folder that transformers loads with no custom code: ``AutoModelForCausalLM``
+ ``AutoTokenizer`` + ``generate`` work offline, and tools that read that layout (vLLM, llama.cpp's
``convert_hf_to_gguf.py``) take it as the plain model it is.

Each architecture is a class transformers ships: arch ``gpt2`` exports as `GPT2LMHeadModel`, ``qwen3``
as `Qwen3ForCausalLM`. The names, layouts and config fields are the architecture's table
(`model.arch.HFMapping`: `model.archs.gpt2_formats`, `model.archs.qwen3_formats`); this module writes the folder.
``vocab_size`` is the padded embedding size (151,680 for Qwen2), and the output layer, when tied, is
stored once as the token embedding (``tie_word_embeddings``).

Stop ids go into ``generation_config.json``: ``<|endoftext|>`` for a base model, ``<|im_end|>`` and
``<|endoftext|>`` for a chat model, with the padded vocabulary rows as ``suppress_tokens``; a chat
model's tokenizer also gets the ChatML ``chat_template`` (the one
``prep.chat_template`` trains on) and ``eos_token = <|im_end|>``. The folder is built beside `out` and
swapped in when complete (`common.outputs.OutputFolder`, kind ``hf-export``): an existing `out` is
replaced only if it is an earlier export holding nothing but the export's own files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from common.outputs import OutputFolder, read_json
from model.adapters import load_model
from model.archs import HFMapping, mapping
from model.export.card import render_card
from model.io import is_chat, read_model_info, save_weights, stop_ids
from model.lm import CausalLM
from model.loader import load_tokenizer_for
from model.runtime import TORCH_DTYPES, dtype_name
from model.sampling import SamplingParams
from prep.chat_template import CHATML_TEMPLATE
from prep.hf_tokenizer_files import save_hf_tokenizer
from prep.tokenizer import IM_END

MARKER = "zh_mini_llm_export"  # in config.json: recognises exports written before folders had a manifest
# What an export of the offline Qwen2 tokenizer holds (the legacy recogniser's list).
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "README.md", "vocab.json",
                "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "chat_template.jinja"}


def mapping_of(model: CausalLM) -> HFMapping:
    return mapping(model.config, "hf")


def hf_state_dict(model: CausalLM, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our weights under the Hugging Face class's names and layouts (the architecture's table)."""
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    return {k: t.to(dtype).contiguous() for k, t in mapping_of(model).state_dict(state, model.config).items()}


def hf_config(model: CausalLM, tokenizer_ids: dict, dtype: torch.dtype) -> dict:
    """config.json: the architecture's own fields, the vocabulary and the special ids."""
    table = mapping_of(model)
    return {
        "architectures": [table.architecture],
        "model_type": table.model_type,
        "vocab_size": model.config.vocab_size,
        **table.config(model.config),
        "use_cache": True,
        "bos_token_id": tokenizer_ids["eot"],
        "eos_token_id": tokenizer_ids["eos"],
        "pad_token_id": tokenizer_ids["eot"],
        "torch_dtype": str(dtype).removeprefix("torch."),
        MARKER: True,
    }


def generation_config(tokenizer_ids: dict, stop_ids: list[int], n_vocab: int, vocab_size: int,
                      defaults: SamplingParams) -> dict:
    """Stop and pad ids, the padded vocabulary rows suppressed, the defaults of ``python -m model sample``.

    The embedding has ``vocab_size`` rows but only ``n_vocab`` are tokens. Training never targets the
    others, yet nothing forbids them, so `suppress_tokens` keeps `generate` from ever producing one
    (our engine cuts them from the logits).
    """
    return {
        "suppress_tokens": list(range(n_vocab, vocab_size)),
        "bos_token_id": tokenizer_ids["eot"],
        "eos_token_id": stop_ids if len(stop_ids) > 1 else stop_ids[0],
        "pad_token_id": tokenizer_ids["eot"],
        "do_sample": True,
        "temperature": defaults.temperature,
        "top_k": defaults.top_k,
        "top_p": defaults.top_p,
        "repetition_penalty": defaults.repetition_penalty,
    }


def _chat_tokenizer_files(folder: Path) -> None:
    """Make a saved tokenizer a chat tokenizer: ChatML template, generation ends at <|im_end|>."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text("utf-8"))
    config["chat_template"] = CHATML_TEMPLATE
    config["eos_token"] = IM_END
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", "utf-8")
    (folder / "chat_template.jinja").unlink(missing_ok=True)  # transformers 5.x's own copy would win
    special_map = folder / "special_tokens_map.json"
    if special_map.exists():
        sm = json.loads(special_map.read_text("utf-8"))
        sm["eos_token"] = IM_END
        special_map.write_text(json.dumps(sm, ensure_ascii=False, indent=2) + "\n", "utf-8")


def _legacy_export_files(folder: Path) -> set[str] | None:
    """An export written before folders had a manifest: config.json carries our marker."""
    try:
        ours = read_json(folder / "config.json").get(MARKER)
    except (OSError, ValueError, AttributeError):
        return None
    return EXPORT_FILES if ours else None


def export_hf(ckpt: str | os.PathLike, out: str | os.PathLike, dtype: str = "fp32") -> dict:
    """Write the Hugging Face folder for `ckpt` into `out`; returns a summary (what was written).

    `dtype` (fp32, bf16, fp16; auto = fp32) is the precision of the stored weights.
    """
    name = dtype_name(dtype)
    torch_dtype = TORCH_DTYPES["fp32" if name == "auto" else name]
    out = Path(out)
    info = read_model_info(ckpt)
    tok = load_tokenizer_for(info, str(ckpt))
    model, info = load_model(ckpt, "cpu")
    table = mapping_of(model)
    chat = is_chat(info)
    stops = stop_ids(tok, chat)
    ids = {"eot": tok.eot_id, "eos": stops[0]}
    with OutputFolder(out, "hf-export", "Hugging Face export", _legacy_export_files) as folder:
        save_weights(hf_state_dict(model, torch_dtype), folder.path("model.safetensors"), {"format": "pt"})
        folder.path("model.safetensors").chmod(0o644)  # safetensors writes 0600; a shared folder needs to be read
        _write_json(folder.path("config.json"), hf_config(model, ids, torch_dtype))
        _write_json(folder.path("generation_config.json"),
                    generation_config(ids, stops, len(tok), model.config.vocab_size, SamplingParams()))
        tokenizer_written = save_hf_tokenizer(tok, folder.partial)
        if tokenizer_written and chat:
            _chat_tokenizer_files(folder.partial)
        folder.path("README.md").write_text(render_card(out, info, tok, chat, tokenizer_written, table.architecture, ckpt),
                                             "utf-8")
        folder.commit()
    return {"out": str(out), "chat": chat, "stop_ids": stops, "tokenizer": tokenizer_written,
            "params": model.num_params(), "dtype": str(torch_dtype).removeprefix("torch.")}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", "utf-8")
