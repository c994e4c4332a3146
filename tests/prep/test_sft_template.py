"""ChatML pieces and masks: what is trained, what is not, and that chatting renders what training saw."""

from __future__ import annotations

import pytest

from prep.chat_template import (
    CHATML_TEMPLATE,
    ChatFormatError,
    chat_pieces,
    encode_pieces,
    render_prompt,
)


def _trained_text(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask, strict=True) if m])


def test_layout_and_mask_on_bytes(byte_tokenizer):
    tok = byte_tokenizer
    messages = [("system", "S"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")]
    pieces, turns = chat_pieces(messages, tok, end_of_text=True)
    ids, mask = encode_pieces(pieces, tok)
    assert tok.decode(ids) == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n<|endoftext|>"
    )
    assert _trained_text(tok, ids, mask) == "A1<|im_end|>A2<|im_end|>"
    # The token after each trained <|im_end|> is an untrained "\n"; the final <|endoftext|> is untrained.
    im_end_positions = [i for i, t in enumerate(ids) if t == tok.im_end_id]
    assert [mask[i] for i in im_end_positions] == [0, 0, 1, 0, 1]
    assert all(ids[i + 1] == ord("\n") and mask[i + 1] == 0 for i in im_end_positions)
    assert ids[-1] == tok.eot_id and mask[-1] == 0
    # turn_starts point at the <|im_start|> piece of each user message; the first one at the system
    # message before it, so a block that starts the dialog keeps its system prompt.
    assert [pieces[i].special_id for i in turns] == [tok.im_start_id] * 2
    assert [pieces[i + 1].text for i in turns] == ["system\nS", "user\nQ2"]
    _, no_system_turns = chat_pieces(messages[1:], tok)
    assert no_system_turns == [0, turns[1] - 4]  # the system message is 4 pieces


def test_assistant_header_is_untrained_and_separate(byte_tokenizer):
    pieces, _ = chat_pieces([("user", "q"), ("assistant", "a")], byte_tokenizer)
    header = [p for p in pieces if p.text == "assistant\n"]
    assert len(header) == 1 and not header[0].trained
    assert [p.text for p in pieces if p.trained and p.text is not None] == ["a"]


def test_literal_specials_in_text_stay_text(qwen):
    tricky = "请解释 <|im_start|>assistant 和 <|endoftext|> 以及 <|im_end|> 是什么"
    pieces, _ = chat_pieces([("user", tricky), ("assistant", tricky)], qwen, end_of_text=True)
    ids, mask = encode_pieces(pieces, qwen)
    specials = [i for i in ids if i >= qwen.eot_id]
    # Exactly the template's: 2 x <|im_start|>, 2 x <|im_end|>, 1 x <|endoftext|>.
    assert specials == [qwen.im_start_id, qwen.im_end_id, qwen.im_start_id, qwen.im_end_id, qwen.eot_id]
    assert _trained_text(qwen, ids, mask) == tricky + "<|im_end|>"


def test_render_prompt_matches_training_prefix(qwen):
    history = [("system", "你是助手。"), ("user", "你好"), ("assistant", "你好！有什么可以帮你？"), ("user", "讲个笑话")]
    prompt = render_prompt([{"role": r, "content": c} for r, c in history], qwen)
    full, _ = chat_pieces(history + [("assistant", "好的。")], qwen)
    train_ids, _ = encode_pieces(full, qwen)
    assert train_ids[: len(prompt)] == prompt
    assert qwen.decode(prompt).endswith("<|im_start|>user\n讲个笑话<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(history, qwen, add_generation_prompt=False) == train_ids[: len(prompt) - 3]


def test_ids_match_hf_chat_template_string(qwen):
    """Our pieces give the ids of the ChatML string (HF's template) encoded with specials allowed."""
    Template = pytest.importorskip("jinja2").Template  # comes with torch and transformers

    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "1+1=?\n请用中文回答。"},
        {"role": "assistant", "content": "1+1=2。\n\n```python\nprint(1 + 1)\n```"},
        {"role": "user", "content": "Why?"},
    ]
    text = Template(CHATML_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert render_prompt(messages, qwen) == qwen.encoding.encode(text, allowed_special="all")


@pytest.mark.parametrize(
    "messages",
    [[("robot", "x")], [("user", "q"), ("system", "late")], [("user", 3)]],
)
def test_bad_messages_raise(byte_tokenizer, messages):
    with pytest.raises(ChatFormatError):
        chat_pieces(messages, byte_tokenizer)
