"""``make harness`` / ``python -m model harness``: lm-evaluation-harness on our checkpoints, offline.

The task is tests/data/harness/zh_mini_mc.yaml: ten Chinese questions in C-Eval's layout with
C-Eval's own prompt. Every figure lm-eval reports is checked against the same log-likelihood
comparison computed here directly with our GPT's forward pass.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from click.testing import CliRunner

from model.cli import cli
from model.measure.harness import HarnessError, hub_offline_reason, require_lm_eval
from prep.chat_template import render_prompt
from prep.tokenizer import load_tokenizer
from tests.conftest import ROOT
from tests.model.conftest import run_make, save_tiny, tiny_model

pytest.importorskip("lm_eval")

TASK_DIR = ROOT / "tests" / "data" / "harness"
DESCRIPTION = "以下是关于常识的单项选择题，请选出其中的正确答案。\n\n"
LETTERS = "ABCD"


def questions() -> list[dict]:
    lines = (TASK_DIR / "zh_mini_mc" / "val.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def doc_text(q: dict) -> str:
    return f"{q['question'].strip()}\nA. {q['A']}\nB. {q['B']}\nC. {q['C']}\nD. {q['D']}\n答案："


def continuation_logprob(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    """log p(continuation | context) from one full forward pass: the direct computation."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1])[0].double(), dim=-1)
    n = len(continuation_ids)
    targets = ids[0, -n:]
    return logp[-n:].gather(1, targets[:, None]).sum().item()


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' cache of the local task out of the home folder, and the offline switches undone.
    In this process, lm-eval's environment report (`pip list` and friends: seconds) is left out."""
    import torch.utils.collect_env

    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: "(left out in tests)")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    if "datasets.config" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets.config"], "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def test_make_harness_accuracy_is_the_direct_log_likelihood_comparison(tmp_path):
    model = tiny_model(block_size=512, seed=3)
    run = save_tiny(tmp_path / "run dir", "pretrain", model=model)  # a space: Make must pass it intact
    out = tmp_path / "results.json"
    r = run_make("harness", CKPT=str(run), TASKS="zh-mini-mc",
                 ARGS=f"--include-path tests/data/harness --device cpu --log-samples --out '{out}'",
                 env={"HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")})
    assert r.returncode == 0, r.stdout + r.stderr
    tok = load_tokenizer("bytes")
    correct, picks, direct_lp = [], [], []
    for q in questions():
        context = DESCRIPTION + doc_text(q)
        scores = []
        for letter in LETTERS:  # lm-eval's split: encode(context + " A"), minus the context's own ids
            whole, ctx = tok.encode(context + " " + letter), tok.encode(context)
            scores.append(continuation_logprob(model, ctx, whole[len(ctx):]))
        picks.append(max(range(4), key=scores.__getitem__))
        correct.append(picks[-1] == LETTERS.index(q["answer"]))
        direct_lp.append(scores)
    assert len(set(picks)) > 1  # the model's answers vary: a comparison that could go wrong
    doc = json.loads(out.read_text("utf-8"))
    assert doc["results"]["zh-mini-mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
    assert doc["n-samples"]["zh-mini-mc"]["effective"] == 10
    assert doc["chance"]["zh-mini-mc"] == pytest.approx(0.25)
    assert doc["lm_eval_version"] and len(doc["task_hashes"]["zh-mini-mc"]) == 64
    assert doc["configs"]["zh-mini-mc"]["doc_to_choice"] == ["A", "B", "C", "D"]
    samples = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text("utf-8").splitlines()]
    for sample in samples:
        got = [resp[0][0] for resp in sample["resps"]]
        assert got == pytest.approx(direct_lp[int(sample["doc_id"])], abs=1e-4)
    assert "zh-mini-mc" in r.stdout and "0.2500" in r.stdout  # the table, with the chance level
    assert not list(tmp_path.glob(".*partial"))


def test_chat_template_scores_the_chatml_prompt_sft_trained_on(tmp_path):
    model = tiny_model(block_size=512, seed=4)
    run = save_tiny(tmp_path / "chat", "sft", model=model)
    out = tmp_path / "chat.json"
    r = CliRunner().invoke(cli, ["harness", "--ckpt", str(run), "--tasks", "zh-mini-mc", "--include-path",
                                 str(TASK_DIR), "--device", "cpu", "--limit", "4", "--apply-chat-template",
                                 "--log-samples", "--bootstrap-iters", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    tok = load_tokenizer("bytes")
    samples = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text("utf-8").splitlines()]
    assert len(samples) == 4
    for sample in samples:
        q = questions()[int(sample["doc_id"])]
        prompt = render_prompt([{"role": "system", "content": DESCRIPTION}, {"role": "user", "content": doc_text(q)}],
                               tok)
        # lm-eval moves the prompt's final "\n" (after "assistant") into the continuation, as with hf models
        direct = [continuation_logprob(model, prompt[:-1], prompt[-1:] + tok.encode(letter)) for letter in LETTERS]
        assert [resp[0][0] for resp in sample["resps"]] == pytest.approx(direct, abs=1e-4)


def test_real_task_offline_fails_in_one_line(tmp_path):
    run = save_tiny(tmp_path / "run")
    r = CliRunner().invoke(cli, ["harness", "--ckpt", str(run), "--tasks", "ceval-valid", "--device", "cpu"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert lines[0].startswith("Error: cannot load the data of ceval-valid") and "ceval/ceval-exam" in lines[0]
    assert "offline" in lines[0] and "Retrying" not in r.output
    assert not (tmp_path / "run" / "harness").exists()  # nothing written for a run that did not happen


def test_unreachable_hub_switches_to_offline_mode(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens here
    for module, names in (("huggingface_hub.constants", ["HF_HUB_OFFLINE"]),
                          ("datasets.config", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])):
        if module in sys.modules:
            for name in names:
                monkeypatch.setattr(sys.modules[module], name, False)
    assert hub_offline_reason(timeout=2) == "127.0.0.1 is not reachable"
    import os

    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_errors_are_one_line(tmp_path, monkeypatch):
    run = save_tiny(tmp_path / "run")
    r = CliRunner().invoke(cli, ["harness", "--ckpt", str(tmp_path / "nope"), "--tasks", "zh-mini-mc"])
    assert r.exit_code == 1 and "train one first" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["harness", "--ckpt", str(run), "--tasks", "zh-mini-mc", "--include-path",
                                 str(tmp_path / "no-such-folder"), "--device", "cpu"])
    assert r.exit_code == 1 and "no-such-folder: no such folder" in r.output
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    with pytest.raises(HarnessError, match=r"pip install -e '\.\[eval\]'"):
        require_lm_eval()


def test_lm_eval_and_transformers_are_imported_only_when_used():
    import subprocess

    code = "import sys, model.cli; bad = [m for m in ('lm_eval', 'transformers', 'datasets') if m in sys.modules]; print(bad)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_adapter_generation_rolling_and_long_contexts(tmp_path):
    from lm_eval.api.instance import Instance

    from model.generate import Engine
    from model.measure.lm_adapter import ZhMiniLM
    from model.sampling import SamplingParams

    model = tiny_model(block_size=64, seed=5)
    lm = ZhMiniLM(str(save_tiny(tmp_path / "run", model=model)), device="cpu")
    tok = load_tokenizer("bytes")
    free = tok.decode(Engine(model, 259, [256]).generate(tok.encode("数学是"), SamplingParams(
        max_new_tokens=12, temperature=0))[0].tokens)
    stop = free[3:5] if len(free) >= 5 else "never"
    reqs = [Instance("generate_until", {}, ("数学是", {"until": [stop], "max_gen_toks": 12}), 0),
            Instance("generate_until", {}, ("数学是", {"until": ["\u2603never"], "max_gen_toks": 12}), 1)]
    cut, whole = lm.generate_until(reqs, disable_tqdm=True)
    assert whole == free and cut == free[: free.find(stop)]
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("数学是一门学科",), 0)],
                                       disable_tqdm=True)[0]
    ids = tok.encode("数学是一门学科")
    assert rolling == pytest.approx(continuation_logprob(model, [tok.eot_id], ids), abs=1e-4)
    assert math.isfinite(rolling)
    context = "数学是研究数量、结构以及空间等概念的一门学科。" * 2  # 138 bytes: more than the 64-token context
    [(lp, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, "数学"), 0)], disable_tqdm=True)
    kept = tok.encode(context + "数学")[-65:]  # cut from the left, as lm-eval's hf model does
    assert lp == pytest.approx(continuation_logprob(model, kept[:-6], kept[-6:]), abs=1e-4)
    assert lm.cut_requests == 1


@pytest.mark.parametrize("tokenizer", ["bytes", "qwen2"])
def test_adapter_chat_text_round_trips_to_render_prompt(tmp_path, tokenizer):
    from model.measure.lm_adapter import ZhMiniLM

    vocab = 384 if tokenizer == "bytes" else 151680
    lm = ZhMiniLM(str(save_tiny(tmp_path / "run", "sft", tokenizer=tokenizer, vocab_size=vocab, std=0.02)),
                  device="cpu")
    tok = load_tokenizer(tokenizer)
    messages = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "数学是什么？"},
                {"role": "assistant", "content": "数学是研究数量的学科。"}, {"role": "user", "content": "举个例子"}]
    assert lm.tok_encode(lm.apply_chat_template(messages)) == render_prompt(messages, tok)
    prefilled = lm.apply_chat_template(messages + [{"role": "assistant", "content": "比如"}], add_generation_prompt=False)
    assert lm.tok_encode(prefilled) == render_prompt(messages, tok) + tok.encode("比如")
