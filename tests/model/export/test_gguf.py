"""GGUF export read back with `gguf.GGUFReader`: llama.cpp's gpt2 metadata, Qwen2's vocabulary, the weights.

Tiny bodies (2 layers x 32). Every type is read back once: a chat model in f32 on the real 151,680-row
Qwen2 embedding, a chat model in f16 and a base model in q8_0 on a 512-id cut of Qwen2's vocabulary
(GGUFReader parses all 300k strings of the whole vocabulary, so each such read costs seconds). Tokens and
merges are checked against the tokenizer's own bytes (both vocabularies), and against Qwen2's real
vocab.json / merges.txt where ../shared has them. qwen3's tensors and metadata, and replacing and
refusing files, use the cut vocabulary too.
"""

from __future__ import annotations

import errno
import json

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.outputs import OutputError
from model.cli import cli
from model.export.gguf import (
    GGUFExportError,
    export_gguf,
    gguf_tensors,
    model_name,
    qwen2_ranks,
    storage_type,
)
from prep.chat_template import CHATML_TEMPLATE
from prep.tokenizer import gpt2_char_to_byte, load_tokenizer
from tests.conftest import shared_path
from tests.model.conftest import save_tiny, tiny_model

N_VOCAB = 151646
F32, F16, Q8_0 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0


def our_tensors(model, n_vocab: int) -> dict[str, torch.Tensor]:
    """llama.cpp's gpt2 names for our weights, spelled out independently of the exporter."""
    sd = model.state_dict()
    out = {"token_embd.weight": sd["transformer.wte.weight"][:n_vocab],
           "position_embd.weight": sd["transformer.wpe.weight"],
           "output_norm.weight": sd["transformer.ln_f.weight"], "output_norm.bias": sd["transformer.ln_f.bias"]}
    names = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
             "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
    for i in range(model.config.n_layer):
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                out[f"blk.{i}.{theirs}.{kind}"] = sd[f"transformer.h.{i}.{ours}.{kind}"]
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, qwen, cut_qwen2):
    """{type: (reader, model, tokenizer)}: a chat model in f32 on Qwen2's whole vocabulary; a chat model in
    f16 and a base model in q8_0 on a 512-id cut of it (the types' tensors and special ids are the subject
    there; reading back Qwen2's 300k vocabulary strings costs ~10 s a file)."""
    tmp = tmp_path_factory.mktemp("gguf")
    chat = tiny_model(block_size=64, vocab_size=151680)
    chat_cut, base = tiny_model(block_size=64, vocab_size=512, seed=2), tiny_model(block_size=64, vocab_size=512, seed=1)
    save_tiny(tmp / "sft", "sft", tokenizer="qwen2", model=chat)
    save_tiny(tmp / "cut" / "sft", "sft", tokenizer=cut_qwen2, model=chat_cut)
    save_tiny(tmp / "t1", "pretrain", tokenizer=cut_qwen2, model=base)
    cut, out = load_tokenizer(cut_qwen2), {}
    for run, model, tok, type_name in ((tmp / "sft", chat, qwen, "f32"), (tmp / "cut" / "sft", chat_cut, cut, "f16"),
                                       (tmp / "t1", base, cut, "q8_0")):
        summary = export_gguf(run, type_name=type_name)
        assert summary["out"] == str(run / f"model-{type_name}.gguf")
        out[type_name] = (gguf.GGUFReader(summary["out"]), model, tok)
    return out


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("type_name", ["f32", "f16", "q8_0"])
def test_metadata_is_llama_cpps_gpt2(exported, type_name):
    reader, model, _ = exported[type_name]
    chat = type_name != "q8_0"
    c = model.config
    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "general.name") == ("zh-mini-llm sft" if chat else "zh-mini-llm t1 · pretrain")
    assert field(reader, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[type_name]
    assert field(reader, "gpt2.context_length") == c.block_size == 64
    assert field(reader, "gpt2.embedding_length") == c.n_embd
    assert field(reader, "gpt2.feed_forward_length") == 4 * c.n_embd
    assert field(reader, "gpt2.block_count") == c.n_layer
    assert field(reader, "gpt2.attention.head_count") == c.n_head
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(c.layer_norm_eps)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "qwen2"


@pytest.mark.parametrize("type_name", ["f32", "f16", "q8_0"])
def test_special_ids_and_chat_template(exported, type_name):
    reader, _, tok = exported[type_name]
    chat = type_name != "q8_0"
    end = tok.im_end_id if chat else tok.eot_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == field(reader, "tokenizer.ggml.eot_token_id") == end
    assert field(reader, "tokenizer.ggml.bos_token_id") == field(reader, "tokenizer.ggml.padding_token_id") == tok.eot_id
    assert type_name != "f32" or tok.eot_id == 151643
    assert field(reader, "tokenizer.ggml.add_bos_token") is False  # training never saw a BOS
    if chat:
        assert field(reader, "tokenizer.chat_template") == CHATML_TEMPLATE
    else:
        assert "tokenizer.chat_template" not in reader.fields


@pytest.mark.parametrize("type_name", ["f32", "q8_0"])
def test_vocabulary_is_the_tokenizers(exported, type_name):
    reader, _, tok = exported[type_name]
    regular = tok.eot_id  # 151,643 for Qwen2's whole vocabulary (f32), 509 for the cut (q8_0)
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == len(tok) == regular + 3  # no padding rows: nothing to sample there
    assert type_name != "f32" or len(tok) == N_VOCAB
    to_byte = gpt2_char_to_byte()
    assert all(bytes(to_byte[ch] for ch in tokens[i]) == tok.token_bytes(i) for i in range(regular))
    assert tokens[regular:] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert set(types[:regular]) == {gguf.TokenType.NORMAL} and types[regular:] == [gguf.TokenType.CONTROL] * 3
    merges = field(reader, "tokenizer.ggml.merges")
    assert len(merges) == regular - 256
    ids = {t: i for i, t in enumerate(tokens)}
    merged = [ids["".join(m.split(" "))] for m in merges]
    assert merged == list(range(256, regular))  # merge k makes token 256 + k: the BPE rank order


def test_vocabulary_matches_qwen2s_own_files(exported):
    folder = shared_path("qwen2-tokenizer")
    reader, _, _ = exported["f32"]
    vocab = json.loads((folder / "vocab.json").read_text("utf-8"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert {t: i for i, t in enumerate(tokens[:151643])} == vocab
    lines = (folder / "merges.txt").read_text("utf-8").splitlines()
    assert field(reader, "tokenizer.ggml.merges") == [line for line in lines[1:] if line]


@pytest.mark.parametrize("type_name", ["f32", "f16", "q8_0"])
def test_tensors_are_the_checkpoints(exported, type_name):
    reader, model, tok = exported[type_name]
    expected = {k: v.float().numpy() for k, v in our_tensors(model, len(tok)).items()}
    stored = {t.name: t for t in reader.tensors}
    assert set(stored) == set(expected)  # no output.weight: llama.cpp then ties it to token_embd
    for name, want in expected.items():
        t = stored[name]
        if want.ndim == 1 or name == "position_embd.weight":
            assert t.tensor_type == F32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want, err_msg=name)
        elif type_name == "f32":
            assert t.tensor_type == F32
            np.testing.assert_array_equal(np.asarray(t.data), want, err_msg=name)
        elif type_name == "f16":
            assert t.tensor_type == F16
            np.testing.assert_array_equal(np.asarray(t.data), want.astype(np.float16), err_msg=name)
        else:
            assert t.tensor_type == Q8_0
            got = gguf.quants.dequantize(np.asarray(t.data), Q8_0).reshape(want.shape)
            # q8_0: blocks of 32 values share one scale d = max|x| / 127, stored as fp16 (relative error
            # <= 2^-11); a value is rounded to a multiple of it: off by <= d/2 + 127 * d * 2^-11 < 0.57 d
            blocks = want.reshape(-1, 32)
            bound = 0.57 * np.abs(blocks).max(axis=1, keepdims=True) / 127
            assert (np.abs(got.reshape(-1, 32) - blocks) <= bound).all(), name


def test_model_without_biases_gets_zero_biases():
    model = tiny_model(bias=False)
    tensors = dict(gguf_tensors(model, 259))
    assert tensors["token_embd.weight"].shape == (259, 32)
    for name in ("blk.0.attn_qkv.bias", "blk.1.ffn_down.bias", "output_norm.bias", "blk.0.attn_norm.bias"):
        assert not tensors[name].any(), name
    assert tensors["blk.0.attn_qkv.bias"].shape == (96,)


def test_storage_types():
    assert storage_type("blk.0.ffn_up.weight", (128, 32), "q8_0") == Q8_0
    assert storage_type("blk.0.ffn_up.weight", (128, 48), "q8_0") == F16  # rows not a multiple of 32
    assert storage_type("position_embd.weight", (64, 32), "q8_0") == F32
    assert storage_type("blk.0.ffn_up.bias", (128,), "f16") == F32
    assert storage_type("token_embd.weight", (10, 32), "f16") == F16


def test_general_name_is_the_run_and_its_stage(tmp_path):
    run = save_tiny(tmp_path / "sft", "sft")
    info = {"data_kind": "sft"}
    assert model_name(run, info) == model_name(run / "checkpoint", info) == "zh-mini-llm sft"
    assert model_name(save_tiny(tmp_path / "big run", "pretrain"), {"data_kind": "pretrain"}) == \
        "zh-mini-llm big run · pretrain"


def test_bytes_tokenizer_is_refused_in_one_line(tmp_path):
    run = save_tiny(tmp_path / "run")
    result = CliRunner().invoke(cli, ["gguf", "--ckpt", str(run)])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: tokenizer 'bytes' has no GGUF vocabulary: only Qwen2's byte-level "
                                     "BPE (the default 'qwen2' tokenizer) can be written to GGUF")
    assert not list(run.glob("*.gguf")) and not list(run.glob(".*partial"))


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory, cut_qwen2):
    """A run whose GGUF files are replaced or refused: a cut Qwen2 vocabulary (the output is the subject)."""
    return save_tiny(tmp_path_factory.mktemp("run") / "sft", "sft", tokenizer=cut_qwen2, vocab_size=512)


def test_foreign_file_is_refused_and_our_own_replaced(qwen_run):
    foreign = qwen_run / "notes.gguf"
    foreign.write_text("my notes")
    with pytest.raises(OutputError, match="not a GGUF written by this project"):
        export_gguf(qwen_run, foreign, "q8_0")
    assert foreign.read_text() == "my notes"
    with pytest.raises(OutputError, match="is a folder"):
        export_gguf(qwen_run, qwen_run, "q8_0")
    first = export_gguf(qwen_run, qwen_run / "m.gguf", "q8_0")
    second = export_gguf(qwen_run, qwen_run / "m.gguf", "f16")  # an earlier export: replaced
    assert second["bytes"] > first["bytes"] and (qwen_run / "m.gguf").stat().st_size == second["bytes"]
    assert not list(qwen_run.glob(".*partial"))


def test_full_disk_leaves_the_previous_file(qwen_run, monkeypatch):
    out = qwen_run / "keep.gguf"
    export_gguf(qwen_run, out, "q8_0")
    before = out.read_bytes()

    def full(self, tensor, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    with pytest.raises(OutputError, match=r"No space left on device; the GGUF .*keep.gguf was not written"):
        export_gguf(qwen_run, out, "f16")
    assert out.read_bytes() == before
    assert not list(qwen_run.glob(".*tmp"))


def test_unknown_type_is_refused(qwen_run):
    with pytest.raises(GGUFExportError, match="type must be one of f32, f16, q8_0"):
        export_gguf(qwen_run, None, "q4_0")


def test_qwen2_loaded_from_a_hugging_face_folder_has_the_same_vocabulary(qwen):
    hf = load_tokenizer(str(shared_path("qwen2-tokenizer")))  # e.g. --tokenizer Qwen/Qwen2-0.5B
    ranks = qwen2_ranks(hf)  # the default tokenizer's own table (load_tokenizer's cache may have dropped `qwen`)
    assert ranks is load_tokenizer("qwen2").ranks and ranks == qwen.ranks


def qwen3_names(model, n_vocab: int) -> dict[str, torch.Tensor]:
    """llama.cpp's qwen3 names for our weights, spelled out independently of the exporter."""
    sd = model.state_dict()
    out = {"token_embd.weight": sd["model.embed_tokens.weight"][:n_vocab], "output_norm.weight": sd["model.norm.weight"]}
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
             "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(model.config.n_layer):
        out |= {f"blk.{i}.{theirs}.weight": sd[f"model.layers.{i}.{ours}.weight"] for theirs, ours in names.items()}
    if not model.config.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"][:n_vocab]
    return out


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_qwen3_gguf_is_llama_cpps_qwen3(tmp_path, tied, cut_qwen2):
    """The architecture's metadata and tensors (the vocabulary's are the gpt2 tests': a cut one here)."""
    model = tiny_model(block_size=64, vocab_size=512, arch="qwen3", n_head=4, tie_embeddings=tied, rope_theta=1e6)
    out = export_gguf(save_tiny(tmp_path / "q", "pretrain", tokenizer=cut_qwen2, model=model), type_name="f32")["out"]
    reader = gguf.GGUFReader(out)
    assert field(reader, "general.architecture") == "qwen3"
    assert "Qwen3 architecture" in field(reader, "general.description")
    c = model.config
    assert field(reader, "qwen3.attention.head_count") == 4 and field(reader, "qwen3.attention.head_count_kv") == 2
    assert field(reader, "qwen3.attention.key_length") == field(reader, "qwen3.attention.value_length") == 8
    assert field(reader, "qwen3.feed_forward_length") == c.ffn_width == 96
    assert field(reader, "qwen3.rope.freq_base") == 1e6
    assert field(reader, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    expected = {k: v.float().numpy() for k, v in qwen3_names(model, len(load_tokenizer(cut_qwen2))).items()}
    stored = {t.name: t for t in reader.tensors}
    assert set(stored) == set(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(np.asarray(stored[name].data).reshape(want.shape), want, err_msg=name)
