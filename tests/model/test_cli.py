"""``python -m model sample|chat|export`` end to end on tiny checkpoints; one-line errors; no unpickling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from model.cli import cli
from model.io import load_model
from tests.model.conftest import favour, save_tiny, tiny_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return {"base": save_tiny(tmp / "base", "pretrain", block_size=64),
            "chat": save_tiny(tmp / "chat", "sft", block_size=64)}


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_sample_base_model_continues_the_prompt(runs):
    r = invoke("sample", "--ckpt", runs["base"], "--prompt", "数学是", "--max-new-tokens", "12", "--temperature", "0")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("数学是")
    assert "base model" in r.stderr and "12 new tokens" in r.stderr and "ended at: max-new-tokens" in r.stderr
    again = invoke("sample", "--ckpt", runs["base"], "--prompt", "数学是", "--max-new-tokens", "12", "--temperature", "0")
    assert again.stdout == r.stdout  # deterministic


def test_sample_chat_model_answers_one_turn_and_stops_at_im_end(tmp_path):
    model = favour(tiny_model(block_size=64), [258])  # <|im_end|> at once
    run = save_tiny(tmp_path / "chat", "sft", model=model)
    r = invoke("sample", "--ckpt", run, "--prompt", "你好", "--system", "简短回答")
    assert r.exit_code == 0, r.output
    assert r.stdout == "\n"  # an empty reply: the prompt is not echoed for a chat model
    assert "chat model" in r.stderr and "ended at: <|im_end|>" in r.stderr


def test_sample_several_samples(runs):
    r = invoke("sample", "--ckpt", runs["chat"], "--prompt", "hi", "--num-samples", "3", "--max-new-tokens", "5",
               "--seed", "1")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("── sample") == 3
    reasons = r.stderr.split("ended at: ")[1].strip().split(", ")  # each sample: a stop token or the limit
    assert len(reasons) == 3 and set(reasons) <= {"max-new-tokens", "<|im_end|>", "<|endoftext|>"}


def test_chat_scripted_messages(runs):
    r = invoke("chat", "--ckpt", runs["chat"], "--system", "你是助手", "--message", "你好", "--message", "/reset",
               "--message", "再见", "--max-new-tokens", "6", "--temperature", "0")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("assistant: ") == 2 and "user: 你好\n" in r.stdout and "user: 再见\n" in r.stdout
    assert "(history cleared)" in r.stderr and "2 replies" in r.stderr


def test_chat_reads_the_terminal_until_eof(runs):
    r = CliRunner().invoke(cli, ["chat", "--ckpt", str(runs["chat"]), "--max-new-tokens", "4"], input="你好\n")
    assert r.exit_code == 0, r.output
    assert "1 reply\n" in r.stderr


def test_export_command(runs, tmp_path):
    r = invoke("export", "--ckpt", runs["chat"], "--out", tmp_path / "hf")
    assert r.exit_code == 0, r.output
    assert "exported a chat model" in r.stderr and "no tokenizer files" in r.stderr  # the bytes tokenizer
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"


@pytest.mark.parametrize("command", ["sample", "chat", "export"])
def test_bad_checkpoint_path_is_one_line(tmp_path, command):
    extra = ["--out", str(tmp_path / "o")] if command == "export" else []
    r = invoke(command, "--ckpt", tmp_path / "missing", *extra)
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [f"Error: {tmp_path / 'missing'}: no such run or checkpoint folder; "
                                             "train one first (make pretrain, make sft) or pass --ckpt"]


def test_tokenizer_mismatch_is_one_line(tmp_path):
    run = save_tiny(tmp_path / "run")
    info_path = run / "checkpoint" / "model.json"
    info = json.loads(info_path.read_text())
    info["tokenizer"]["fingerprint"] = "0000"
    info_path.write_text(json.dumps(info))
    r = invoke("sample", "--ckpt", run)
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "fingerprint" in lines[0] and "Traceback" not in r.output


class Boom:
    """Unpickling this runs code: it writes a file. Loading a checkpoint must never do that."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    run = save_tiny(tmp_path / "run", "sft")
    sentinel = tmp_path / "pwned.txt"
    for name in ("trainer.pt", "model.pt", "pytorch_model.bin"):  # traps beside the real files
        torch.save({"x": Boom(str(sentinel))}, run / "checkpoint" / name)

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_model(run)
    assert invoke("sample", "--ckpt", run, "--max-new-tokens", "3").exit_code == 0
    assert invoke("chat", "--ckpt", run, "--message", "hi", "--max-new-tokens", "3").exit_code == 0
    assert invoke("export", "--ckpt", run, "--out", tmp_path / "hf").exit_code == 0
    assert not sentinel.exists()
