"""``python -m model export|gguf|ollama``: the trained model in the formats other tools run.

`export` writes a Hugging Face folder (transformers, vLLM), `gguf` one GGUF file (llama.cpp, LM Studio),
`ollama` that file plus an Ollama Modelfile. Registered in `model.cli`.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from common.cli import UserPath, one_line_errors
from model.cli_common import console, dtype_option, with_hint
from model.export.gguf import GGUF_TYPES, export_gguf
from model.export.hf import export_hf
from model.export.ollama import MODELFILE, check_modelfile, ollama_model_name, write_modelfile
from model.export.peft_adapter import export_adapter
from model.io import CheckpointError, RunFolder, resolve_model_dir


@click.command()
@click.option("--ckpt", type=UserPath(), default=Path("runs/sft"), show_default=True,
              help="run folder (runs/sft) or its checkpoint/ folder")
@click.option("--out", type=UserPath(), required=True,
              help="folder to write (replaced only if it is an earlier export holding nothing else)")
@dtype_option("fp32", "weight precision in model.safetensors (auto = fp32)")
@click.option("--adapter", type=click.Choice(["", "0", "1"]), default="", show_default=False,
              help="1: a LoRA run's adapters as a PEFT adapter folder (for the base's export) instead of the merged "
              "model (make export ADAPTER=1)")
@one_line_errors
def export(ckpt: Path, out: Path, dtype: str, adapter: str) -> None:
    """Write a Hugging Face folder (GPT2LMHeadModel, Qwen3ForCausalLM, ...: the architecture's own class): config,
    weights, tokenizer, generation config. A LoRA run's adapters are merged in, or with --adapter written as a
    PEFT adapter folder for the base's export."""
    t0 = time.perf_counter()
    if adapter == "1":
        return export_peft(ckpt, out, t0)
    try:
        with console.status(f"exporting {ckpt} to {out} ..."):
            summary = export_hf(ckpt, out, dtype)
    except CheckpointError as e:
        raise with_hint(e, ckpt) from None
    kind = "chat" if summary["chat"] else "base"
    files = sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    listing = ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in files)
    console.print(f"exported a {kind} model ({summary['params'] / 1e6:.1f}M params, {summary['dtype']}) to {out} "
                  f"in {time.perf_counter() - t0:.1f}s: {listing}; stop ids {summary['stop_ids']}")
    if not summary["tokenizer"]:
        console.print("[yellow]this tokenizer has no Hugging Face form: no tokenizer files were written[/]")


def export_peft(ckpt: Path, out: Path, t0: float) -> None:
    try:
        with console.status(f"exporting the adapters of {ckpt} to {out} ..."):
            s = export_adapter(ckpt, out)
    except CheckpointError as e:
        raise with_hint(e, ckpt) from None
    console.print(f"exported {s['tensors']} adapter tensors ({s['bytes'] / 1e6:.2f} MB) to {out} in "
                  f"{time.perf_counter() - t0:.1f}s; load them with peft onto the base's export "
                  f"(make export CKPT={shlex.quote(s['base'])})")


def write_gguf_file(ckpt: Path, out: Path | None, type_name: str) -> dict:
    """`export_gguf` with a progress bar over the bytes written; errors become one line."""
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    t0 = time.perf_counter()
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(f"GGUF {type_name}: reading {ckpt}, building the vocabulary", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, description=f"GGUF {type_name}: writing tensors", completed=done, total=total)

            summary = export_gguf(ckpt, out, type_name, progress)
    except CheckpointError as e:
        raise with_hint(e, ckpt) from None
    kind = "chat model (ChatML template, stops at <|im_end|>)" if summary["chat"] else "base model (no chat template)"
    console.print(f"wrote {summary['out']} ({summary['bytes'] / 1e6:.1f} MB, {type_name}) in {time.perf_counter() - t0:.1f}s: "
                  f"{summary['name']!r}, a {kind}, {summary['n_vocab']} tokens, context {summary['context']}")
    return summary


@click.command()
@click.option("--ckpt", type=UserPath(), default=Path("runs/sft"), show_default=True,
              help="run folder (runs/sft) or its checkpoint/ folder")
@click.option("--out", type=UserPath(), default=None,
              help="GGUF file to write [default: <run folder>/model-<type>.gguf]; replaced only if an earlier export")
@click.option("--type", "type_name", type=click.Choice(list(GGUF_TYPES)), default="f16", show_default=True,
              help="weights: f32 (exact), f16 (half the size), q8_0 (a quarter, 8-bit blocks)")
@one_line_errors
def gguf(ckpt: Path, out: Path | None, type_name: str) -> None:
    """Write one GGUF file for llama.cpp, LM Studio and Ollama (llama.cpp's graph of the architecture, gpt2 or
    qwen3; Qwen2's vocabulary or its cut).

    llama.cpp does not stop a model at the context it was trained for: keep prompt + reply within it
    (llama-cli / llama-server -c <context>), as printed at the end.
    """
    s = write_gguf_file(ckpt, out, type_name)
    ctx, n = s["context"], s["context"] // 2
    console.print(f"run it with llama.cpp:  llama-cli -m {shlex.quote(s['out'])} -c {ctx} -n {n}   "
                  f"(or llama-server ... -c {ctx}); prompt + reply must fit in {ctx} tokens")


@click.command()
@click.option("--ckpt", type=UserPath(), default=Path("runs/sft"), show_default=True,
              help="run folder (runs/sft) or its checkpoint/ folder")
@click.option("--type", "type_name", type=click.Choice(list(GGUF_TYPES)), default="f16", show_default=True,
              help="GGUF weights: f32, f16 or q8_0")
@one_line_errors
def ollama(ckpt: Path, type_name: str) -> None:
    """Write the GGUF and an Ollama Modelfile beside it, then print the `ollama create` command."""
    try:  # a Modelfile that is not ours is refused before the GGUF is written beside it
        check_modelfile(RunFolder.of(resolve_model_dir(ckpt)).path / MODELFILE)
    except CheckpointError as e:
        raise with_hint(e, ckpt) from None
    s = write_gguf_file(ckpt, None, type_name)
    modelfile = write_modelfile(s["out"], s["chat"], s["context"], source=str(ckpt))
    name = ollama_model_name(s["name"])
    console.print(f"wrote {modelfile}. Import and run it with Ollama:")
    click.echo(f"ollama create {name} -f {shlex.quote(str(modelfile))}\nollama run {name}")
