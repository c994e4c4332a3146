"""GGUF exports of one model: size and write time per type, and what llama.cpp makes of each file.

    python -m bench.gguf_parity                                  # random GPT-2-init weights, the mini shape, Qwen2 vocabulary
    PYTHONPATH=.venv/llama python -m bench.gguf_parity           # ... and llama.cpp (after `make gguf-check` built it)
    PYTHONPATH=.venv/llama python -m bench.gguf_parity --ckpt runs/sft

For every type (f32, f16, q8_0) the file is written with `model.export.gguf.export_gguf`. Where
llama-cpp-python imports, llama.cpp then runs it against our model on the checkpoint (fp32, CPU):

* logits of a `block_size`-token prompt of sample Wikipedia text: max |difference| and how often the
  top-1 token agrees;
* greedy decoding of `--new-tokens` tokens after a prompt that fills the rest of the block: how many
  tokens equal ours, and decode tokens/s of both (the ratio is llama.cpp / ours; 2 threads each).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from model.archs import build, config_from_dict
from model.export.gguf import GGUF_TYPES, export_gguf
from model.generate import Engine, row_tokens
from model.io import load_model, save_model
from model.lm import CausalLM
from model.loader import load_tokenizer_for
from model.sampling import SamplingParams
from prep.tokenizer import load_tokenizer, pad_vocab_size

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2


def sample_ids(tok, n: int) -> list[int]:
    """`n` token ids of the bundled Wikipedia sample (repeated if short)."""
    lines = (ROOT / "sample_data" / "wiki_zh" / "AA" / "wiki_00").read_text("utf-8").splitlines()
    ids: list[int] = []
    for line in lines:
        ids += tok.encode(json.loads(line)["text"])
        if len(ids) >= n:
            return ids[:n]
    return (ids * (n // max(len(ids), 1) + 1))[:n]


def timed_steps(steps: Iterator[int], n: int) -> tuple[list[int], float]:
    """The first `n` tokens of a generator and the decode rate after the first (which includes the prompt)."""
    tokens = [next(steps)]
    t0 = time.perf_counter()
    tokens += [next(steps) for _ in range(n - 1)]
    return tokens, (n - 1) / (time.perf_counter() - t0)


def llama_figures(llama_cpp, path: str, model: CausalLM, n_vocab: int, ids: list[int], new: int) -> dict:
    c = model.config
    llm = llama_cpp.Llama(model_path=path, n_ctx=c.block_size, n_batch=c.block_size, n_threads=THREADS,
                          logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = llm.scores[: len(ids)]  # a view of llama-cpp-python's buffer: used before the next eval
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0, :, :n_vocab].numpy()
    figures = {"diff": float(np.abs(theirs - ours).max()), "top1": float((theirs.argmax(-1) == ours.argmax(-1)).mean())}
    prompt = ids[: c.block_size - new]
    figures["greedy"], figures["rate"] = timed_steps(
        iter(llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True)), new)
    llm.close()
    return figures


@click.command()
@click.option("--ckpt", type=click.Path(path_type=Path), help="a run or checkpoint folder (default: random weights)")
@click.option("--new-tokens", default=32, show_default=True, help="greedy tokens decoded by both")
def main(ckpt: Path | None, new_tokens: int) -> None:
    """File sizes per GGUF type; with llama-cpp-python, logits parity, greedy agreement and decode speed."""
    console = Console(width=140)
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
        console.print("[yellow]llama-cpp-python is not importable: sizes only (see `make gguf-check`)[/]")
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        if ckpt is None:
            tok = load_tokenizer("qwen2")
            torch.manual_seed(0)
            ckpt = Path(tmp) / "mini"
            save_model(ckpt / "checkpoint", build(config_from_dict({"vocab_size": pad_vocab_size(len(tok))})), tok.identity(),
                       "pretrain", step=0)
        model, info = load_model(ckpt)
        tok = load_tokenizer_for(info, str(ckpt))
        c = model.config
        ids = sample_ids(tok, c.block_size)
        engine = Engine(model, len(tok), stop_ids=[])
        params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
        ours, our_rate = timed_steps(iter(row_tokens(engine.stream(ids[: c.block_size - new_tokens], params))),
                                     new_tokens)
        console.print(f"{model.num_params() / 1e6:.1f}M params ({c.n_layer}x{c.n_embd}, block {c.block_size}); "
                      f"ours: greedy decode {our_rate:.1f} tokens/s on {THREADS} threads")
        table = Table(title=f"GGUF exports of {ckpt if info.get('step') else 'random mini-shaped weights'}")
        for col in ("type", "size MB", "write s", "logits max |diff|", "top-1 agree", "greedy = ours",
                    "llama.cpp tok/s", "vs ours"):
            table.add_column(col, justify="right")
        for type_name in GGUF_TYPES:
            t0 = time.perf_counter()
            summary = export_gguf(ckpt, Path(tmp) / f"model-{type_name}.gguf", type_name)
            row = [type_name, f"{summary['bytes'] / 1e6:,.1f}", f"{time.perf_counter() - t0:.1f}"]
            if llama_cpp is not None:
                f = llama_figures(llama_cpp, summary["out"], model, len(tok), ids, new_tokens)
                same = next((i for i, (a, b) in enumerate(zip(f["greedy"], ours, strict=True)) if a != b), new_tokens)
                row += [f"{f['diff']:.2e}", f"{f['top1']:.1%}", f"{same}/{new_tokens}", f"{f['rate']:.1f}",
                        f"{f['rate'] / our_rate:.2f}x"]
            table.add_row(*row)
        console.print(table)


if __name__ == "__main__":
    main()
