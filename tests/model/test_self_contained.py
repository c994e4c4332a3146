"""Self-contained checkpoints: a cut vocabulary's files travel inside the checkpoint (`model.tokenizer_files`);
a run folder moved elsewhere, its vocabulary folder deleted, still samples, serves (`python -m model serve`,
one chat completion, the whole data folder gone), exports (transformers loads the export with its own
tokenizer offline: the same greedy text) and converts to GGUF. An older checkpoint that names its folder
works while the folder exists, says how to pack it, and `model pack` makes it whole."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import httpx
import pytest
import torch
from click.testing import CliRunner

from model.generate import Engine
from model.io import stop_ids
from model.loader import load_for_generation
from model.sampling import SamplingParams
from model.tokenizer_files import TOKENIZER_DIR, pack
from tests.conftest import ROOT
from tests.train.conftest import run_cli, tiny_args

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory):
    """A tiny qwen3 run trained on the sample with the modern recipe's cut vocabulary (1,024 ids)."""
    from prep.cli import cli

    root = tmp_path_factory.mktemp("walk")
    made = CliRunner().invoke(cli, ["wiki", "sample_data/wiki_zh", "--out", str(root / "data" / "wiki"), "--recipe",
                                    "modern", "--vocab-size", "1024", "--workers", "1", "--val-fraction", "0.1"])
    assert made.exit_code == 0, made.output
    result = run_cli("pretrain", *tiny_args("--max-steps", "6", "--eval-every", "6"), "--recipe", "modern",
                     "--data", str(root / "data" / "wiki"), "--out", str(root / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def greedy_ours(run, prompt: str) -> tuple[list[int], list[int]]:
    loaded = load_for_generation(run, device="cpu", dtype="fp32")
    ids = loaded.tokenizer.encode(prompt)
    engine = Engine(loaded.model, len(loaded.tokenizer), stop_ids(loaded.tokenizer, False))
    return ids, engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=0))[0].tokens


def test_a_moved_run_without_its_vocabulary_samples_exports_and_converts(cut_run, tmp_path, capfd):
    from model.cli import cli

    assert (cut_run / "run" / "checkpoint" / TOKENIZER_DIR / "cut_vocab.json").is_file()
    moved = tmp_path / "elsewhere"
    shutil.copytree(cut_run / "run", moved)
    hidden = cut_run / "data" / "vocab.hidden"
    (cut_run / "data" / "vocab").rename(hidden)
    try:
        prompt_ids, mine = greedy_ours(moved, "数学是")
        assert "uses the tokenizer folder" not in capfd.readouterr().err  # no note: it carries its own
        for args in (["export", "--ckpt", str(moved), "--out", str(moved / "hf")], ["gguf", "--ckpt", str(moved)]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
        tok = transformers.AutoTokenizer.from_pretrained(moved / "hf", local_files_only=True)
        assert tok("数学是").input_ids == prompt_ids
        theirs = transformers.AutoModelForCausalLM.from_pretrained(moved / "hf", local_files_only=True).eval()
        out = theirs.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=12,
                              attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
        new = out[0, len(prompt_ids):].tolist()
        eos = theirs.generation_config.eos_token_id
        stop = next((i for i, t in enumerate(new) if t in ({eos} if isinstance(eos, int) else set(eos))), len(new))
        assert new[:stop] == mine
        assert tok.decode(new[:stop]) == load_for_generation(moved, device="cpu").tokenizer.decode(mine)
    finally:
        hidden.rename(cut_run / "data" / "vocab")


def test_a_moved_run_without_its_data_serves_a_chat_completion(cut_run, tmp_path):
    """`make serve` as a user runs it on a copied run folder: `python -m model serve` in another folder,
    the run's whole data folder (token files and vocabulary) gone; one chat completion answers."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(cut_run / "run", moved)
    hidden = cut_run / "data.hidden"
    (cut_run / "data").rename(hidden)
    proc = subprocess.Popen([sys.executable, "-m", "model", "serve", "--ckpt", str(moved), "--port", "0"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)})
    try:
        lines = []
        for line in proc.stderr:  # ends at exit: a failed load is its last lines, not a hang
            lines.append(line)
            if "API base URL" in line:
                break
        assert "API base URL" in lines[-1], "".join(lines)[-2000:]
        api = lines[-1].split()[3]
        assert api.startswith("http://127.0.0.1:")
        name = httpx.get(api + "/models").json()["data"][0]["id"]
        body = {"model": name, "messages": [{"role": "user", "content": "数学是"}], "max_tokens": 4,
                "temperature": 0}
        reply = httpx.post(api + "/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    finally:
        proc.kill()
        hidden.rename(cut_run / "data")


def test_an_older_checkpoint_works_while_its_folder_exists_and_pack_makes_it_whole(cut_run, tmp_path, capfd):
    old = tmp_path / "old"
    shutil.copytree(cut_run / "run", old)
    shutil.rmtree(old / "checkpoint" / TOKENIZER_DIR)  # as written before checkpoints carried it
    greedy_ours(old, "数学")
    assert "python -m model pack --ckpt" in capfd.readouterr().err
    assert pack(old) == old / "checkpoint" / TOKENIZER_DIR and pack(old) is None  # once
    hidden = cut_run / "data" / "vocab.hidden"
    (cut_run / "data" / "vocab").rename(hidden)
    try:
        greedy_ours(old, "数学")
        # the packed checkpoint is still the run's own folder: training resumes into it
        more = run_cli("pretrain", *tiny_args("--max-steps", "8", "--eval-every", "8"), "--recipe", "modern",
                       "--data", str(cut_run / "data" / "wiki"), "--out", str(old))
        assert more.returncode == 0, more.stderr[-2000:]
        assert (old / "checkpoint" / TOKENIZER_DIR / "vocab.json").is_file()
    finally:
        hidden.rename(cut_run / "data" / "vocab")


def card_snippet(readme: str) -> str:
    return readme.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("kind", ["sft", "pretrain"])
def test_the_model_cards_code_runs_as_written(cut_run, tmp_path, kind):
    """The export's README.md: a Hugging Face YAML header, and Python that runs offline as printed (a chat
    template's BatchEncoding included), against a tiny export with its own tokenizer."""
    import subprocess
    import sys

    from model.export.hf import export_hf
    from tests.model.conftest import save_tiny, tiny_model

    run = save_tiny(tmp_path / "run", kind, tokenizer=str(cut_run / "data" / "vocab"),
                    model=tiny_model(block_size=48, vocab_size=1024))
    export_hf(run, tmp_path / "hf")
    readme = (tmp_path / "hf" / "README.md").read_text("utf-8")
    header = readme.split("---\n")[1]
    for line in ("language:", "license:", "library_name: transformers", "pipeline_tag: text-generation"):
        assert line in header
    result = subprocess.run([sys.executable, "-c", card_snippet(readme)], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()  # it printed a continuation
