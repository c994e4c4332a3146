"""Row formats: Belle multi-turn histories, single-turn alpaca rows, ShareGPT conversations; detection."""

from __future__ import annotations

import json

import pytest

from prep.sft_formats import (
    RowError,
    alpaca_messages,
    belle_multiturn_messages,
    detect_row_format,
    row_messages,
    sharegpt_messages,
)


def belle(instruction: str, output: str = "最后的回答", input: str = "") -> dict:
    return {"instruction": instruction, "input": input, "output": output}


def test_belle_multiturn_split_and_final_output():
    row = belle("Human:你好\nAssistant:你好！\nHuman:  1+1=?  \nAssistant:", output=" 等于2。\n")
    assert belle_multiturn_messages(row) == [
        ("user", "你好"), ("assistant", "你好！"), ("user", "1+1=?"), ("assistant", "等于2。"),
    ]  # fmt: skip


def test_belle_marker_only_at_line_start():
    row = belle("Human:他说 Assistant: 不对，Human:也不对\n还有一行\nAssistant:")
    assert belle_multiturn_messages(row) == [
        ("user", "他说 Assistant: 不对，Human:也不对\n还有一行"), ("assistant", "最后的回答"),
    ]  # fmt: skip


def test_belle_input_appends_to_last_human_turn():
    row = belle("Human:a\nAssistant:b\nHuman:翻译下面的句子\nAssistant:", input="Hello world")
    assert belle_multiturn_messages(row)[2] == ("user", "翻译下面的句子\nHello world")


@pytest.mark.parametrize(
    ("instruction", "output", "reason"),
    [
        ("Human:a\nAssistant:b\nHuman:c", "x", "history_not_ending_in_assistant_marker"),
        ("Human:a\nAssistant:already answered", "x", "history_not_ending_in_assistant_marker"),
        ("Assistant:a\nHuman:b\nAssistant:", "x", "markers_out_of_order"),
        ("Human:a\nHuman:b\nAssistant:", "x", "markers_out_of_order"),
        ("hello\nHuman:a\nAssistant:", "x", "text_before_first_marker"),
        ("just a question", "x", "no_markers"),
        ("Human:a\nAssistant:", "   ", "empty_reply"),
        ("Human:a\nAssistant:\nHuman:b\nAssistant:", "x", "empty_reply"),
        ("Human:\nAssistant:", "x", "empty_message"),
    ],
)
def test_belle_bad_rows(instruction, output, reason):
    with pytest.raises(RowError) as e:
        belle_multiturn_messages(belle(instruction, output))
    assert e.value.reason == reason


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "Human:a\nAssistant:"}, "missing_field"),
        ({"instruction": ["Human:a"], "output": "x"}, "wrong_type"),
        ({"instruction": "Human:a\nAssistant:", "output": 5}, "wrong_type"),
        ({"instruction": "Human:a\nAssistant:", "input": {}, "output": "x"}, "wrong_type"),
    ],
)
def test_belle_field_errors(row, reason):
    with pytest.raises(RowError) as e:
        row_messages(row, "belle_multiturn")
    assert e.value.reason == reason


def test_alpaca():
    assert alpaca_messages({"instruction": "翻译成英文：", "input": "你好", "output": "Hello"}) == [
        ("user", "翻译成英文：\n你好"), ("assistant", "Hello"),
    ]  # fmt: skip
    assert alpaca_messages({"instruction": "Human: 你好", "output": "hi"})[0] == ("user", "Human: 你好")
    assert alpaca_messages({"instruction": "", "input": "only input", "output": "x"})[0] == ("user", "only input")
    with pytest.raises(RowError, match="empty_reply"):
        alpaca_messages({"instruction": "q", "input": None, "output": ""})


def test_sharegpt_both_styles_and_system():
    from_value = {
        "system": "你是医生。",
        "conversations": [
            {"from": "human", "value": "头疼"}, {"from": "gpt", "value": "多休息"},
            {"from": "human", "value": "还有呢"}, {"from": "gpt", "value": "多喝水"},
            {"from": "human", "value": "unanswered, dropped"},
        ],
    }  # fmt: skip
    repairs = []
    assert row_messages(from_value, "sharegpt", repairs) == [
        ("system", "你是医生。"), ("user", "头疼"), ("assistant", "多休息"), ("user", "还有呢"), ("assistant", "多喝水"),
    ]  # fmt: skip
    assert repairs == ["unanswered_last_turn_dropped"]
    role_content = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a"}]}  # fmt: skip
    assert sharegpt_messages(role_content) == [("system", "S"), ("user", "q"), ("assistant", "a")]


@pytest.mark.parametrize(
    ("conversations", "reason"),
    [
        ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
         "turns_out_of_order"),
        ([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
         "turns_out_of_order"),
        ([{"from": "human", "value": "q"}], "no_reply"),
        ([{"from": "alien", "value": "q"}], "unknown_role"),
        ([{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}], "empty_reply"),
        ([{"from": "human", "value": "q"}, {"from": "gpt", "value": None}], "missing_field"),
        (["q", "a"], "wrong_type"),
        ("q", "wrong_type"),
    ],
)  # fmt: skip
def test_sharegpt_bad_rows(conversations, reason):
    with pytest.raises(RowError) as e:
        sharegpt_messages({"conversations": conversations})
    assert e.value.reason == reason


def test_not_an_object():
    with pytest.raises(RowError, match="not_an_object"):
        row_messages(["a", "b"], "alpaca")


def test_detect_format():
    multi = belle("Human:a\nAssistant:")
    single = {"instruction": "写一首诗", "input": "", "output": "..."}
    share = {"conversations": []}
    assert detect_row_format([multi] * 3) == "belle_multiturn"
    assert detect_row_format([single] * 3) == "alpaca"
    assert detect_row_format([share, "junk", None]) == "sharegpt"
    # The majority of the first rows decides for the whole file, so a stray "Human:" does not.
    assert detect_row_format([single, single, belle("Human: 你好")]) == "alpaca"
    assert detect_row_format([{"text": "x"}, 3]) is None


def test_detect_real_files():
    from tests.conftest import shared_path

    folder = shared_path("data", "belle")
    for name, fmt in [("multiturn_chat_sample.json", "belle_multiturn"), ("Belle_open_source_1k.json", "alpaca")]:
        with open(folder / name, encoding="utf-8") as f:
            assert detect_row_format(json.loads(line) for line in f) == fmt
