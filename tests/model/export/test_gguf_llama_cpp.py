"""llama.cpp runs our GGUF as we run the checkpoint: token ids, logits, greedy text, the chat prompt, the stop.

Needs llama-cpp-python, which compiles llama.cpp from source: `make gguf-check` builds it beside the
venv and runs this file (with -s, so the measured figures are printed). `make test` skips it.

The model is the tiny 2 x 32 body with wide weights (std 0.3, so greedy output changes from token to
token) on the real 151,680-row Qwen2 embedding. llama.cpp does not stop a GPT-2 model at its context
(a position past `block_size` aborts the process) and rounds n_ctx up to a multiple of 256, so prompt +
generation are kept within the 64-token block by the tests themselves.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from model.adapters import load_model
from model.export.gguf import export_gguf
from model.generate import Engine
from model.sampling import SamplingParams
from prep.chat_template import render_prompt
from tests.model.conftest import save_tiny, tiny_model

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed: `make gguf-check` builds it and runs these tests")

BLOCK = 64
N_VOCAB = 151646
TEXTS = [
    "数学是研究数量、结构以及空间等概念的一门学科。",
    "Python 3.11 于2022年10月24日发布，速度提升了10%～60%！",
    "GPT-2 has 1.5B parameters; 它的上下文是1024个token。\n\n  第二段：  缩进、tab\t和 emoji 🙂。",
    "“引号”《书名》——破折号…… 12345678901234567890 3.14159 0x1F",
    "Hello,world!It's   spaced   out,isn't it? I'm SURE they'll/they've/we'd",
]
MESSAGES = [{"role": "system", "content": "你是一个乐于助人的助手。"},
            {"role": "user", "content": "数学是什么？Python 3.11 有 42 个新特性吗？"}]


def load(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=BLOCK, n_batch=BLOCK, n_threads=2, verbose=False, **kw)


def make_chat_model_that_stops(tok):
    """The tiny chat model, with <|im_end|>'s (tied) embedding row turned toward the hidden state after a
    few reply tokens, so its greedy reply ends with <|im_end|> after some text rather than never."""
    model = tiny_model(block_size=BLOCK, vocab_size=151680)
    prompt = render_prompt(MESSAGES, tok)
    engine = Engine(model, N_VOCAB, [tok.im_end_id, tok.eot_id])
    reply = engine.generate(prompt, SamplingParams(max_new_tokens=8, temperature=0))[0].tokens
    with torch.no_grad():
        h = model.hidden_states(torch.tensor([prompt + reply[:5]]))[0, -1]
        model.transformer.wte.weight[tok.im_end_id] = 3.0 * h / h.norm()
    return model


@pytest.fixture(scope="module")
def chat(tmp_path_factory, qwen):
    """(model, {type: gguf path}) for a chat model exported in every type."""
    model = make_chat_model_that_stops(qwen)
    run = save_tiny(tmp_path_factory.mktemp("llama") / "sft", "sft", tokenizer="qwen2", model=model)
    return model, {t: export_gguf(run, type_name=t)["out"] for t in ("f32", "f16", "q8_0")}


def ours_greedy(model, tok, prompt, stops):
    params = SamplingParams(max_new_tokens=BLOCK - len(prompt), temperature=0)
    return Engine(model, N_VOCAB, stops).generate(prompt, params)[0]


def test_token_ids_equal_ours(chat, qwen):
    llm = load(chat[1]["f16"], vocab_only=True)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == qwen.encode(text), text
        assert llm.detokenize(qwen.encode(text)).decode() == text


# Measured on this model (logits span about -9..12): f32 1.1e-2 (ggml's GELU goes through an fp16 table),
# f16 2.1e-2, q8_0 0.87 with 94% top-1 agreement (its 32 weights per row share one 8-bit scale).
@pytest.mark.parametrize("type_name,max_diff,min_top1", [("f32", 0.03, 1.0), ("f16", 0.06, 1.0), ("q8_0", 1.5, 0.85)])
def test_logits_match(chat, qwen, type_name, max_diff, min_top1):
    model, paths = chat
    ids, theirs, ours, diff, top1 = compare_logits(model, paths[type_name], qwen)
    print(f"\n[gguf-check] {type_name}: logits max |diff| {diff:.2e} (logits span {ours.min():.1f}..{ours.max():.1f}), "
          f"top-1 agreement {top1:.0%} over {len(ids)} positions")
    assert theirs.shape == (len(ids), N_VOCAB)  # no padding rows: the vocabulary is the tokenizer's
    assert diff < max_diff and top1 >= min_top1


def compare_logits(model, path, qwen):
    """(ids, llama.cpp's logits, ours, max |diff|, top-1 agreement) over the first block of TEXTS."""
    ids = qwen.encode("".join(TEXTS))[:BLOCK]
    llm = load(path, logits_all=True)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0, :, :N_VOCAB].numpy()
    return ids, theirs, ours, float(np.abs(theirs - ours).max()), float((theirs.argmax(-1) == ours.argmax(-1)).mean())


@pytest.fixture(scope="module")
def base_f32(tmp_path_factory):
    """(model, gguf path) of a base model (untouched random weights), in f32."""
    model = tiny_model(block_size=BLOCK, vocab_size=151680, seed=2)
    run = save_tiny(tmp_path_factory.mktemp("llama") / "base", "pretrain", tokenizer="qwen2", model=model)
    return model, export_gguf(run, type_name="f32")["out"]


def llama_greedy(llm, prompt: list[int]) -> list[int]:
    """llama.cpp's greedy continuation of `prompt`, up to an end-of-generation token or the block."""
    theirs = []
    for t in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t) or len(prompt) + len(theirs) >= BLOCK:
            break
        theirs.append(t)
    return theirs


def test_greedy_continuation_equals_ours_f32(base_f32, qwen):
    model, path = base_f32
    llm = load(path)
    for text in TEXTS[:2]:
        prompt = qwen.encode(text)[:16]
        mine = ours_greedy(model, qwen, prompt, [qwen.eot_id])
        theirs = llama_greedy(llm, prompt)
        assert len(mine.tokens) >= 10 and len(set(mine.tokens)) > 3  # a real continuation, not one token
        print(f"\n[gguf-check] greedy f32 after {len(prompt)} tokens: {len(mine.tokens)} ours, {len(theirs)} "
              f"llama.cpp's, identical: {theirs == mine.tokens}")
        assert theirs == mine.tokens


@pytest.fixture(scope="module")
def qwen3_base(tmp_path_factory):
    """(model, {type: gguf path}) of an arch qwen3 base model (GQA 4 -> 2, QK-norm, RoPE) in every type."""
    model = tiny_model(block_size=BLOCK, vocab_size=151680, seed=3, arch="qwen3", n_head=4)
    run = save_tiny(tmp_path_factory.mktemp("llama") / "qwen3", "pretrain", tokenizer="qwen2", model=model)
    return model, {t: export_gguf(run, type_name=t)["out"] for t in ("f32", "f16", "q8_0")}


# Written without llama-cpp-python at hand (not installed where arch qwen3 was added): the bounds are
# gpt2's; q8_0 is held to the logits' top-1 agreement, as gpt2's is, since 8-bit rows can flip a near tie.
@pytest.mark.parametrize("type_name,max_diff,min_top1", [("f32", 0.03, 1.0), ("f16", 0.06, 1.0), ("q8_0", 1.5, 0.85)])
def test_qwen3_logits_and_greedy_equal_ours(qwen3_base, qwen, type_name, max_diff, min_top1):
    model, paths = qwen3_base
    _, _, _, diff, top1 = compare_logits(model, paths[type_name], qwen)
    prompt = qwen.encode(TEXTS[0])[:16]
    mine, greedy = ours_greedy(model, qwen, prompt, [qwen.eot_id]).tokens, llama_greedy(load(paths[type_name]), prompt)
    print(f"\n[gguf-check] qwen3 {type_name}: logits max |diff| {diff:.2e}, top-1 agreement {top1:.0%}; greedy "
          f"{len(mine)} tokens, identical: {greedy == mine}")
    assert diff < max_diff and top1 >= min_top1
    if type_name != "q8_0":
        assert greedy == mine


@pytest.mark.parametrize("model_kw", [{}, {"arch": "qwen3", "n_head": 4}], ids=["gpt2", "qwen3"])
def test_lora_run_merged_gguf_greedy_equals_ours_f32(tmp_path, qwen, model_kw):
    """A LoRA SFT run (rank 8, every block Linear, B drawn at random so the merge matters) converted as
    `make gguf` does (adapters merged into the base): llama.cpp's greedy continuation is our merged model's."""
    from tests.model.export.test_lora_export import lora_run  # here, not at the top: it needs peft

    base, run = lora_run(tmp_path, rank=8, tokenizer="qwen2", block_size=BLOCK, vocab_size=151680, seed=4, **model_kw)
    merged, base_model = load_model(run)[0], load_model(base)[0]
    path = export_gguf(run, type_name="f32")["out"]
    ids, _, ours, diff, top1 = compare_logits(merged, path, qwen)
    prompt = qwen.encode(TEXTS[0])[:16]
    mine, greedy = ours_greedy(merged, qwen, prompt, [qwen.eot_id]).tokens, llama_greedy(load(path), prompt)
    with torch.no_grad():
        moved = float(np.abs(base_model(torch.tensor([ids]))[0, :, :N_VOCAB].numpy() - ours).max())
    print(f"\n[gguf-check] LoRA {model_kw.get('arch', 'gpt2')} f32 merged: logits max |diff| {diff:.2e} (the adapters "
          f"move the base's by up to {moved:.2f}), top-1 {top1:.0%}; greedy {len(mine)} tokens, identical: {greedy == mine}")
    assert mine != ours_greedy(base_model, qwen, prompt, [qwen.eot_id]).tokens  # the merge changes the text
    # Top-1 is not asserted: within |diff| < 0.03 it can flip only at a near tie (measured: qwen3's one position
    # of 64 whose top two of our logits are 1.7e-3 apart); the bound on the logits is the check.
    assert diff < 0.03 and greedy == mine

def test_chat_prompt_is_identical(chat, qwen):
    llm = load(chat[1]["f16"], vocab_only=True)
    ours = render_prompt(MESSAGES, qwen)
    template = llm.metadata["tokenizer.chat_template"]
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(template, eos_token="<|im_end|>",
                                                                 bos_token="<|endoftext|>")
    text = formatter(messages=MESSAGES).prompt  # what llama-cpp-python's chat completion sends
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours
    assert builtin_chat_text(template, MESSAGES) == text


def builtin_chat_text(template: str, messages) -> str:
    """llama.cpp's own chat formatting (C API; llama-cli and llama-server use it), given our template: it
    recognises ChatML and renders it in C++, without Jinja."""
    arr = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages])
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_chat_apply_template(template.encode(), arr, len(messages), True, buf, len(buf))
    assert 0 < n < len(buf)
    return buf.raw[:n].decode()


@pytest.mark.parametrize("type_name", ["f32", "q8_0"])
def test_chat_reply_stops_at_im_end(chat, qwen, type_name):
    model, paths = chat
    mine = ours_greedy(model, qwen, render_prompt(MESSAGES, qwen), [qwen.im_end_id, qwen.eot_id])
    assert mine.finish_reason == "stop" and mine.stop_token == qwen.im_end_id and mine.tokens  # the setup works
    llm = load(paths[type_name])
    out = llm.create_chat_completion(MESSAGES, temperature=0.0, top_k=1, repeat_penalty=1.0,
                                     max_tokens=BLOCK - len(render_prompt(MESSAGES, qwen)))
    choice = out["choices"][0]
    print(f"\n[gguf-check] chat {type_name}: {len(mine.tokens)}-token reply, then <|im_end|>; "
          f"llama.cpp: finish_reason {choice['finish_reason']!r}, same text: "
          f"{choice['message']['content'] == qwen.decode(mine.tokens)}")
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == qwen.decode(mine.tokens)
