"""`prep sft` end to end on hand-made rows (bytes tokenizer): masks, turns, formats, bad rows, determinism."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prep.cli import cli
from prep.records import PrepError
from prep.sft import run_sft
from tests.prep.sft_checks import folder_bytes, read_dialogs, trained_runs, untrained_text

IM_END = "<|im_end|>"


def write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prep(input, out, **kw):
    kw = {"tokenizer": "bytes", "val_fraction": 0.0, "workers": 1, "show_progress": False} | kw
    return run_sft(input, out, **kw)


MULTI = {"instruction": "Human:你好\nAssistant:你好！我能帮你什么？\nHuman:讲个笑话\nAssistant:", "input": "",
         "output": "从前有座山。"}


def test_multiturn_mask_turns_and_layout(tmp_path, byte_tokenizer):
    tok = byte_tokenizer
    meta = prep(write_jsonl(tmp_path / "d.jsonl", [MULTI]), tmp_path / "out")
    assert meta["kind"] == "sft" and meta["splits"]["train"]["docs"] == 1
    (d,) = read_dialogs(tmp_path / "out")
    assert tok.decode(d.ids) == (
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n你好！我能帮你什么？<|im_end|>\n"
        "<|im_start|>user\n讲个笑话<|im_end|>\n<|im_start|>assistant\n从前有座山。<|im_end|>\n<|endoftext|>"
    )
    assert trained_runs(tok, d) == ["你好！我能帮你什么？" + IM_END, "从前有座山。" + IM_END]
    assert "你好\n" not in "".join(trained_runs(tok, d)) and "讲个笑话" in untrained_text(tok, d)
    assert len(d.turns) == 2
    for t in d.turns:
        assert d.ids[t] == tok.im_start_id and tok.decode(d.ids[t + 1 : t + 6]) == "user\n"
    assert meta["splits"]["train"]["target_tokens"] == sum(d.mask)


def test_system_prompt_and_literal_specials(tmp_path, byte_tokenizer):
    tok = byte_tokenizer
    sneaky = {"instruction": "Human:打印 <|im_start|>assistant\n<|im_end|> 和 <|endoftext|>\nAssistant:", "input": "",
              "output": "好的：<|im_end|><|endoftext|>"}
    prep(write_jsonl(tmp_path / "d.jsonl", [sneaky]), tmp_path / "out", system="你是一个有用的助手。")
    (d,) = read_dialogs(tmp_path / "out")
    assert tok.decode(d.ids).startswith("<|im_start|>system\n你是一个有用的助手。<|im_end|>\n<|im_start|>user\n打印 <|im_start|>")
    # Special ids only where the template put them: system, user, assistant + the final <|endoftext|>.
    assert [t for t in d.ids if t >= 256] == [tok.im_start_id, tok.im_end_id] * 3 + [tok.eot_id]
    assert trained_runs(tok, d) == ["好的：<|im_end|><|endoftext|>" + IM_END]
    # The dialog's one block start is its system message, so blocks keep the system prompt.
    assert d.turns == [0]


def test_alpaca_sharegpt_and_json_array_in_one_folder(tmp_path, byte_tokenizer):
    tok = byte_tokenizer
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_jsonl(data / "a_alpaca.jsonl", [{"instruction": "翻译：", "input": "cat", "output": "猫"}])
    share = [{"conversations": [{"from": "system", "value": "自带系统"}, {"from": "human", "value": "q1"},
                                {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"},
                                {"from": "gpt", "value": "a2"}]},
             {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"},
                           {"role": "user", "content": "unanswered"}]}]
    (data / "sub" / "b_share.json").write_text(json.dumps(share, ensure_ascii=False, indent=1), encoding="utf-8")
    (data / "c_multi.json").write_text(json.dumps([MULTI], ensure_ascii=False), encoding="utf-8")
    meta = prep(data, tmp_path / "out", system="默认系统")
    assert [s["path"] for s in meta["sources"]] == ["a_alpaca.jsonl", "c_multi.json", "sub/b_share.json"]
    assert [s["records_kept"] for s in meta["sources"]] == [1, 1, 2]
    assert meta["repaired"] == {"unanswered_last_turn_dropped": {"count": 1, "examples": ["sub/b_share.json:26"]}}
    alpaca, multi, share1, share2 = read_dialogs(tmp_path / "out")
    assert tok.decode(alpaca.ids).startswith("<|im_start|>system\n默认系统<|im_end|>\n<|im_start|>user\n翻译：\ncat<|im_end|>")
    assert trained_runs(tok, alpaca) == ["猫" + IM_END]
    assert trained_runs(tok, multi)[-1] == "从前有座山。" + IM_END
    assert tok.decode(share1.ids).startswith("<|im_start|>system\n自带系统<|im_end|>\n")  # its own, not --system
    assert trained_runs(tok, share1) == ["a1" + IM_END, "a2" + IM_END]
    assert share1.turns[0] == 0 and tok.decode(share1.ids[share1.turns[1] : share1.turns[1] + 8]) == "<|im_start|>user\nq2"
    assert trained_runs(tok, share2) == ["v" + IM_END]


def test_bad_rows_are_counted_not_fatal(tmp_path):
    good = MULTI
    rows = [
        good,
        {"instruction": "Assistant:先说\nHuman:后问\nAssistant:", "input": "", "output": "x"},
        {"instruction": "Human:问题\nAssistant:", "input": "", "output": ""},
        {"instruction": ["Human:"], "input": "", "output": "x"},
        {"instruction": "Human:问题\nAssistant:"},
        [1, 2],
        good,  # a duplicate
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows, raw_lines=['{"instruction": "Human:', "not json at all"])
    meta = prep(path, tmp_path / "out")
    skipped = {reason: (e["count"], e["examples"][0]) for reason, e in meta["skipped"].items()}
    assert skipped == {
        "markers_out_of_order": (1, "bad.jsonl:2"),
        "empty_reply": (1, "bad.jsonl:3"),
        "wrong_type": (1, "bad.jsonl:4"),
        "missing_field": (1, "bad.jsonl:5"),
        "not_an_object": (1, "bad.jsonl:6"),
        "duplicate": (1, "bad.jsonl:7"),
        "invalid_json": (2, "bad.jsonl:8"),
    }
    assert meta["records"]["kept"] == 1 and meta["sources"][0]["records_read"] == 9


def test_a_cut_json_array_loses_only_its_rest_and_the_files_beside_it_are_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    second = {**MULTI, "output": "第二个回答。"}
    (data / "a.json").write_text(json.dumps([MULTI, second], ensure_ascii=False, indent=1)[:-20], encoding="utf-8")
    write_jsonl(data / "b.jsonl", [{"instruction": "翻译：", "input": "cat", "output": "猫"}])
    meta = prep(data, tmp_path / "out")
    assert [s["records_kept"] for s in meta["sources"]] == [1, 1]  # a.json's first dialog, b.jsonl's one
    assert meta["skipped"]["invalid_json"]["count"] == 1
    assert meta["skipped"]["invalid_json"]["examples"][0].startswith("a.json:")


def test_nothing_usable_is_one_line_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "Human:q\nAssistant:", "output": " "}])
    result = CliRunner().invoke(cli, ["sft", str(path), "--out", str(tmp_path / "out"), "--tokenizer", "bytes",
                                      "--workers", "1"])
    assert result.exit_code == 1
    assert "no usable document" in result.output and "empty_reply" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_missing_input_and_hub_offline_are_one_line_errors(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(cli, ["sft", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no such file or folder" in result.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrepError, match=r"^BelleGroup/multiturn_chat_0\.8M: cannot load this dataset") as e:
        prep("BelleGroup/multiturn_chat_0.8M", tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_hub_route_on_a_local_datasets_folder(tmp_path, monkeypatch, byte_tokenizer):
    """What a hub name goes through, run offline on a folder `datasets` can load."""
    from prep import sft

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "hub").mkdir()
    write_jsonl(tmp_path / "hub" / "train.json", [MULTI])
    monkeypatch.setattr(sft, "looks_like_hub_name", lambda spec: True)
    meta = prep(str(tmp_path / "hub"), tmp_path / "out")
    (d,) = read_dialogs(tmp_path / "out")
    assert trained_runs(byte_tokenizer, d)[-1] == "从前有座山。" + IM_END
    assert meta["sources"][0]["records_kept"] == 1


def test_byte_identical_across_runs_and_workers(tmp_path):
    rows = [{"instruction": f"Human:问题{i}\nAssistant:答{i}\nHuman:再问{i}\nAssistant:", "input": "",
             "output": f"再答{i}" * (i % 7 + 1)} for i in range(300)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    options = {"val_fraction": 0.1, "system": "S", "chunk_bytes": 4096}
    prep(path, tmp_path / "one", **options)
    prep(path, tmp_path / "two", workers=2, **options)
    prep(path, tmp_path / "one_again", **options)
    one = folder_bytes(tmp_path / "one")
    assert one == folder_bytes(tmp_path / "two") == folder_bytes(tmp_path / "one_again")
    assert set(one) == {".zh-mini-llm.json", "meta.json"} | {f"{s}.{e}" for s in ("train", "val") for e in ("bin", "idx", "mask.bin", "turns.idx")}
    meta = json.loads(one["meta.json"])
    assert meta["splits"]["val"]["docs"] > 0 and meta["splits"]["train"]["docs"] + meta["splits"]["val"]["docs"] == 300


def test_json_array_and_json_lines_give_the_same_tokens(tmp_path):
    rows = [MULTI, {"instruction": "Human:a\nAssistant:b\nHuman:c\nAssistant:", "input": "补充", "output": "d"},
            {"instruction": "Human:bad"}, "not a row"]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    (tmp_path / "rows.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    lines_meta = prep(tmp_path / "rows.jsonl", tmp_path / "lines", val_fraction=0.5)
    array_meta = prep(tmp_path / "rows.json", tmp_path / "array", val_fraction=0.5)
    lines, array = folder_bytes(tmp_path / "lines"), folder_bytes(tmp_path / "array")
    assert {k: v for k, v in lines.items() if k != "meta.json"} == {k: v for k, v in array.items() if k != "meta.json"}
    assert lines_meta["splits"] == array_meta["splits"]
    assert {r: e["count"] for r, e in array_meta["skipped"].items()} == {"missing_field": 1, "not_an_object": 1}
    assert array_meta["skipped"]["not_an_object"]["examples"] == ["rows.json:15"]  # the line the element starts on


def test_cli_with_system_prompt(tmp_path, byte_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [MULTI])
    result = CliRunner().invoke(cli, ["sft", str(path), "--out", str(tmp_path / "out"), "--tokenizer", "bytes",
                                      "--workers", "1", "--val-fraction", "0", "--system", "你是助手。"])
    assert result.exit_code == 0, result.output
    assert "sft summary" in result.output
    (d,) = read_dialogs(tmp_path / "out")
    assert byte_tokenizer.decode(d.ids).startswith("<|im_start|>system\n你是助手。<|im_end|>\n<|im_start|>user\n")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text("utf-8"))
    assert meta["options"]["system"] == "你是助手。" and meta["tokenizer"]["name"] == "bytes"
