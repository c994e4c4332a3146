"""``make bpb`` / ``python -m model bpb``: bits per byte of our checkpoints and of Hugging Face models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from model.cli import cli
from model.export.hf import export_hf
from model.measure.bpb import windows
from model.measure.texts import TextError, read_documents
from model.scoring import HFBackend
from prep.tokenizer import load_tokenizer
from tests.model.conftest import run_make, save_tiny, tiny_model

transformers = pytest.importorskip("transformers")

DOCS = [
    "数学是研究数量、结构以及空间等概念及其变化的一门学科，属于形式科学的一种。数学利用抽象化和逻辑推理，"
    "从计数、计算、量度、对物体形状及运动的观察发展而成。",
    "长江是亚洲第一长河，全长约六千三百公里，流经青海、西藏、四川、云南、重庆、湖北、湖南、江西、安徽、江苏和上海，"
    "最终注入东海。",
    "Python 是一种广泛使用的高级编程语言。",
]


def write_shard(path) -> None:
    """A wiki_zh-style shard: one JSON object a line, the text under "text"."""
    path.write_text("".join(json.dumps({"id": str(i), "title": "t", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(DOCS)), "utf-8")


@pytest.mark.parametrize("n,start,context,stride", [(1, 0, 4, 2), (10, 0, 4, 2), (10, None, 4, 1), (37, 0, 8, 8),
                                                    (37, 0, 8, 3), (5, None, 16, 8), (0, 0, 4, 2)])
def test_windows_score_every_token_once_with_enough_context(n, start, context, stride):
    tokens = list(range(100, 100 + n))
    rows = windows(tokens, start, context, stride)
    seq = ([start] if start is not None else []) + tokens
    scored = []
    for row in rows:
        assert 2 <= len(row.ids) <= context + 1
        first = seq.index(row.ids[0])
        assert list(row.ids) == seq[first : first + len(row.ids)]
        for k in range(len(row.ids) - row.n_scored, len(row.ids)):  # target row.ids[k], seen from row.ids[:k]
            scored.append(row.ids[k])
            assert k >= min(context - stride, first + k)  # at least context - stride tokens, or all before it
    assert scored == (tokens if start is not None else tokens[1:])


def test_texts_read_shards_files_and_folders(tmp_path):
    write_shard(tmp_path / "wiki_00")
    (tmp_path / "b.txt").write_text("\ufeff一篇文章。\n第二行。\n", "utf-8")
    (tmp_path / ".hidden").write_text("不读", "utf-8")
    docs = list(read_documents(tmp_path))
    assert [d.text for d in docs] == ["一篇文章。\n第二行。\n", *DOCS]  # b.txt sorts before wiki_00
    assert docs[1].where.endswith("wiki_00:1") and docs[0].n_bytes == len("一篇文章。\n第二行。\n".encode())
    (tmp_path / "wiki_00").write_text('{"text": "好"}\n{"text": 3}\n', "utf-8")
    with pytest.raises(TextError, match=r"wiki_00:2: expected a JSON object with a \"text\" string"):
        list(read_documents(tmp_path))
    (tmp_path / "wiki_00").write_bytes(b'{"text": "ok"}\n{"te')
    with pytest.raises(TextError, match=r"wiki_00:2: not valid JSON"):
        list(read_documents(tmp_path / "wiki_00"))
    (tmp_path / "wiki_00").write_bytes("数学".encode("gbk"))
    with pytest.raises(TextError, match=r"wiki_00:1: not UTF-8 text"):
        list(read_documents(tmp_path / "wiki_00"))


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory, cut_qwen2):
    """Our checkpoint with a cut Qwen2 tokenizer (byte-level BPE, 512 ids) and a tiny body, and its export."""
    tmp = tmp_path_factory.mktemp("bpb")
    run = save_tiny(tmp / "run", "sft", tokenizer=cut_qwen2, model=tiny_model(block_size=32, vocab_size=512, std=0.1))
    export_hf(run, tmp / "hf")
    write_shard(tmp / "wiki_00")
    return tmp


def test_make_bpb_gives_the_same_figure_for_a_checkpoint_and_its_export(qwen_run, cut_qwen2):
    out = qwen_run / "bpb.json"
    r = run_make("bpb", MODEL=str(qwen_run / "run"), TEXT=str(qwen_run / "wiki_00"),
                 ARGS=f"--model {qwen_run / 'hf'} --stride 12 --device cpu --out {out}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bits per byte" in r.stdout and "zh-mini-llm" in r.stdout and "huggingface" in r.stdout
    ours, theirs = json.loads(out.read_text("utf-8"))
    assert ours["kind"] == "zh-mini-llm" and theirs["kind"] == "huggingface"
    assert ours["tokens"] == theirs["tokens"] > 3 * 32  # documents longer than the context: windows slide
    assert ours["bytes"] == theirs["bytes"] == sum(len(d.encode()) for d in DOCS)
    tok = load_tokenizer(cut_qwen2)
    assert ours["start_token"] == theirs["start_token"] == tok.eot_id != tok.im_end_id  # even for a chat export
    assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_byte"], abs=1e-3)
    assert ours["loss_per_token"] == pytest.approx(theirs["loss_per_token"], abs=1e-3)
    assert ours["bits_per_byte"] > 0.5  # a random model, far from the text


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A random GPT2LMHeadModel with a byte-level BPE tokenizer of its own (not ours), saved as HF folders."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("gpt2") / "model"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(DOCS * 3, trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                               eos_token="<|endoftext|>")
    tok.save_pretrained(folder)
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_a_hugging_face_model_is_scored_as_computed_directly(gpt2_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(HFBackend, "LOGITS_BYTES", 1)  # one window per forward pass: the memory cap's path
    shard = tmp_path / "wiki_00"
    write_shard(shard)
    out = tmp_path / "bpb.json"
    r = CliRunner().invoke(cli, ["bpb", "--model", str(gpt2_folder), "--text", str(shard), "--device", "cpu",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    [got] = json.loads(out.read_text("utf-8"))
    tok = transformers.AutoTokenizer.from_pretrained(gpt2_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()
    nats, tokens = 0.0, 0
    for text in DOCS:  # each document fits the context: one pass, every token from <|endoftext|> on
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].double(), dim=-1)
        nats -= logp.gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        tokens += len(ids) - 1
    n_bytes = sum(len(d.encode()) for d in DOCS)
    assert got["tokens"] == tokens and got["bytes"] == n_bytes and got["context"] == 256
    assert got["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-6)
    assert got["loss_per_token"] == pytest.approx(nats / tokens, rel=1e-6)


def test_bpb_errors_are_one_line(tmp_path, qwen_run):
    (tmp_path / "a-file").write_text("not a folder")
    cases = [
        (["--model", qwen_run / "run", "--text", qwen_run / "wiki_00", "--out", tmp_path / "a-file" / "x.json"],
         "cannot write"),
        (["--model", tmp_path / "nope", "--text", qwen_run / "wiki_00"], "no such folder"),
        (["--model", tmp_path, "--text", qwen_run / "wiki_00"], "neither model.json (ours) nor config.json"),
        (["--model", qwen_run / "run", "--text", tmp_path / "missing.txt"], "missing.txt: no such file or folder"),
        (["--model", qwen_run / "run", "--text", qwen_run / "wiki_00", "--context", "33"],
         "context must be between 1 and the model's 32 tokens"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(cli, ["bpb", *map(str, args)])
        assert r.exit_code == 1 and message in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1  # (a failed write comes after the table, on stdout)


def test_bpb_out_never_replaces_a_file_that_is_not_a_bpb_result(tmp_path, qwen_run):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    r = CliRunner().invoke(cli, ["bpb", "--model", str(qwen_run / "run"), "--text", str(qwen_run / "wiki_00"),
                                 "--out", str(mine)])
    assert r.exit_code == 1 and "not a bpb result written by this project" in r.stderr, r.output
    assert mine.read_text() == '{"mine": true}'


def test_a_lone_surrogate_in_a_json_line_is_one_line(tmp_path):
    path = tmp_path / "shard.jsonl"
    path.write_text(json.dumps({"text": "好"}) + "\n" + json.dumps({"text": "坏\ud800"}) + "\n", encoding="utf-8")
    with pytest.raises(TextError, match=r"shard.jsonl:2: .*lone surrogate"):
        list(read_documents(path))
