"""Generation speed: our KV cache vs recomputing the whole context vs transformers, same prompts, greedy.

    python -m bench.generate                         # random weights, the mini shape (12x768), Qwen2 vocabulary
    python -m bench.generate --n-layer 6 --n-embd 384 --n-head 6      # a smaller model, quicker on a CPU
    python -m bench.generate --device cuda --prompts 4 --new-tokens 64 --prompt-tokens 192
    python -m bench.generate --ckpt runs/sft         # a real checkpoint (its tokenizer, its shape)

Three paths generate `--new-tokens` greedy tokens after each of `--prompts` prompts of
`--prompt-tokens` tokens (default 240 + 16: the context grows to the 256-token block):

* kv cache:   `model.generate.Engine` (prompt once, then one token per step);
* recompute:  the same engine with ``use_cache=False``: the whole context runs again for every token;
* transformers: ``generate`` of `GPT2LMHeadModel` loaded from the folder `python -m model export`
  writes (its own KV cache), fp32 like ours.

Each run is timed twice: for 1 new token (the prompt pass, giving prompt tokens/s) and for all of
them; decode tokens/s = (new - 1) / (the difference). Stops are off, so every path makes the same
number of tokens, and the tokens of the three paths are compared. Runs are interleaved and the best of
``--repeat`` kept, since a shared machine is noisy. Goals: decode >= 5x recompute, >= transformers.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from model.archs import build as build_model
from model.archs import config_from_dict
from model.export.hf import export_hf
from model.generate import Engine
from model.io import load_model, save_model
from model.loader import load_tokenizer_for
from model.runtime import pick_device
from model.sampling import SamplingParams
from prep.tokenizer import load_tokenizer, pad_vocab_size

ROOT = Path(__file__).resolve().parent.parent

FALLBACK_TEXT = ("数学是研究数量、结构、变化以及空间等概念的一门学科。它从计数、计算、度量以及对物体形状和运动的观察中"
                 "发展而来，使用抽象化和逻辑推理得出结论。")


def prompt_texts(n: int) -> list[str]:
    """Article texts from the bundled sample (or a fixed paragraph), one per prompt."""
    texts = []
    sample = ROOT / "sample_data" / "wiki_zh" / "AA" / "wiki_00"
    if sample.is_file():
        for line in sample.read_text("utf-8").splitlines():
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    texts = [t for t in texts if len(t) > 400] or [FALLBACK_TEXT * 20]
    return [texts[i % len(texts)] for i in range(n)]


def make_prompts(tok, n: int, length: int) -> list[list[int]]:
    prompts = []
    for text in prompt_texts(n):
        ids = tok.encode(text)
        while len(ids) < length:
            ids += ids
        prompts.append(ids[:length])
    return prompts


def build(ckpt: Path | None, shape: dict, folder: Path, console: Console):
    """Our model, its tokenizer, and the exported folder (a random-weight checkpoint is saved first)."""
    if ckpt is None:
        tok = load_tokenizer("qwen2")
        torch.manual_seed(0)
        model = build_model(config_from_dict({"vocab_size": pad_vocab_size(len(tok)), **shape}))
        ckpt = folder / "ckpt"
        save_model(ckpt, model, tok.identity(), "pretrain", step=0)
    with console.status("exporting to Hugging Face format ..."):
        export_hf(ckpt, folder / "hf")
    model, info = load_model(ckpt)
    return model, load_tokenizer_for(info, str(ckpt)), folder / "hf"


def time_call(fn, device: torch.device) -> tuple[float, list[int]]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    tokens = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, tokens


@click.command()
@click.option("--ckpt", type=click.Path(path_type=Path), help="a run or checkpoint folder (default: random weights)")
@click.option("--n-layer", default=12, show_default=True)
@click.option("--n-head", default=12, show_default=True)
@click.option("--n-embd", default=768, show_default=True)
@click.option("--block-size", default=256, show_default=True)
@click.option("--prompts", default=2, show_default=True, help="number of prompts")
@click.option("--prompt-tokens", default=240, show_default=True)
@click.option("--new-tokens", default=16, show_default=True)
@click.option("--repeat", default=2, show_default=True, help="runs per path and prompt; the best is kept")
@click.option("--device", default="cpu", show_default=True)
def main(ckpt, n_layer, n_head, n_embd, block_size, prompts, prompt_tokens, new_tokens, repeat, device) -> None:
    """Decode and prompt tokens/s: KV cache vs full recompute vs transformers generate."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    console = Console()
    dev = pick_device(device)
    shape = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size}
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, hf_folder = build(ckpt, shape, Path(tmp), console)
        hf = AutoModelForCausalLM.from_pretrained(hf_folder).to(dev).eval()
    model = model.to(dev).eval()
    c = model.config
    if prompt_tokens + new_tokens > c.block_size:
        raise click.UsageError(f"--prompt-tokens + --new-tokens must fit the block of {c.block_size}")
    engine = Engine(model, len(tok), stop_ids=[])  # no stops: every path makes exactly new_tokens
    ids = make_prompts(tok, prompts, prompt_tokens)

    def ours(prompt, n, use_cache):
        params = SamplingParams(max_new_tokens=n, temperature=0)
        return lambda: engine.generate(prompt, params, use_cache=use_cache)[0].tokens

    def theirs(prompt, n):
        x = torch.tensor([prompt], device=dev)
        kw = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, attention_mask=torch.ones_like(x),
                  temperature=None, top_k=None, top_p=None)

        def run():
            with torch.no_grad():
                return hf.generate(x, **kw)[0, len(prompt):].tolist()
        return run

    paths = {"kv cache": lambda p, n: ours(p, n, True), "recompute": lambda p, n: ours(p, n, False),
             "transformers": theirs}
    console.print(f"{model.num_params() / 1e6:.1f}M params ({c.n_layer}x{c.n_embd}, vocab {c.vocab_size}) on {dev}, "
                  f"{torch.get_num_threads()} threads; {prompts} prompts x {prompt_tokens} tokens + {new_tokens} new, "
                  f"greedy, best of {repeat}")
    best, outputs = time_paths(paths, ids, new_tokens, repeat, dev, console)
    report(console, paths, best, outputs, prompts, prompt_tokens, new_tokens)


def time_paths(paths: dict, ids: list[list[int]], new_tokens: int, repeat: int, dev: torch.device, console: Console):
    """Best seconds per (path, prompt, 1 or all new tokens), interleaved; and each path's tokens."""
    best = {(name, i, n): float("inf") for name in paths for i in range(len(ids)) for n in (1, new_tokens)}
    outputs: dict[tuple[str, int], list[int]] = {}
    for make in paths.values():  # warm-up (allocations, kernels), not timed
        make(ids[0][:16], 2)()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("timing", total=repeat * len(paths) * len(ids) * 2)
        for _ in range(repeat):
            for name, make in paths.items():
                for i, prompt in enumerate(ids):
                    for n in (1, new_tokens):
                        progress.update(task, description=f"{name}, prompt {i + 1}, {n} new")
                        seconds, out = time_call(make(prompt, n), dev)
                        best[name, i, n] = min(best[name, i, n], seconds)
                        if n == new_tokens:
                            outputs[name, i] = out
                        progress.advance(task)
    return best, outputs


def report(console, paths, best, outputs, prompts, prompt_tokens, new_tokens) -> None:
    rates = {}
    for name in paths:
        first = sum(best[name, i, 1] for i in range(prompts))
        total = sum(best[name, i, new_tokens] for i in range(prompts))
        rates[name] = (prompts * prompt_tokens / first, prompts * (new_tokens - 1) / max(total - first, 1e-9))
    table = Table(title="greedy generation")
    for col in ("path", "prompt tokens/s", "decode tokens/s", "decode vs recompute", "decode vs transformers"):
        table.add_column(col, justify="right")
    for name, (prompt_rate, decode_rate) in rates.items():
        table.add_row(name, f"{prompt_rate:,.0f}", f"{decode_rate:,.1f}",
                      f"{decode_rate / rates['recompute'][1]:.1f}x", f"{decode_rate / rates['transformers'][1]:.2f}x")
    console.print(table)
    same = all(outputs["kv cache", i] == outputs[name, i] for name in paths for i in range(prompts))
    kv = rates["kv cache"][1]
    console.print(f"same tokens on all three paths: {'yes' if same else 'NO'}")
    console.print(f"goal kv cache >= 5x recompute: {kv / rates['recompute'][1]:.1f}x "
                  f"{'met' if kv >= 5 * rates['recompute'][1] else 'NOT met'}; "
                  f"goal >= transformers: {kv / rates['transformers'][1]:.2f}x "
                  f"{'met' if kv >= rates['transformers'][1] else 'NOT met'}")


if __name__ == "__main__":
    main()
