"""``python -m model sample|chat|export``: thin Click commands over `model.generate`, `model.chat`, `model.export`.

Conversation text goes to stdout as it is generated; notes and summaries go to stderr, so
``python -m model sample ... > out.txt`` keeps only the text. Errors a user can fix are one line.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from model.chat import ChatSession, run_chat
from model.export import ExportError, export_hf
from model.generate import row_tokens, stream_text
from model.gguf_export import GGUF_TYPES, GGUFExportError, export_gguf
from model.io import CheckpointError
from model.loader import LoadedModel, load_for_generation
from model.ollama import ModelfileError, ollama_model_name, write_modelfile
from model.sampling import SamplingParams
from prep.chat_template import ChatFormatError, render_prompt

DEFAULTS = SamplingParams()
console = Console(stderr=True, highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """Use a trained model: `sample` text, `chat` in the terminal, `export` to Hugging Face format,
    `gguf` for llama.cpp / LM Studio, `ollama` for Ollama."""


def model_options(f):
    options = [
        click.option("--ckpt", type=click.Path(path_type=Path), default=Path("runs/sft"), show_default=True,
                     help="run folder (runs/sft) or its checkpoint/ folder"),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULTS.max_new_tokens,
                     show_default=True, help="stop after this many new tokens"),
        click.option("--temperature", type=click.FloatRange(min=0), default=DEFAULTS.temperature, show_default=True,
                     help="0 = greedy (deterministic)"),
        click.option("--top-k", type=click.IntRange(min=0), default=DEFAULTS.top_k, show_default=True,
                     help="sample among the k likeliest tokens (0 = all)"),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=DEFAULTS.top_p,
                     show_default=True, help="nucleus sampling: the likeliest tokens covering this probability"),
        click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True),
                     default=DEFAULTS.repetition_penalty, show_default=True,
                     help=">1 makes tokens already in the context less likely (1 = off)"),
        click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="same seed, same text"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps"),
        click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                     help="auto: bf16 autocast on GPUs that support it, fp32 elsewhere"),
        click.option("--system", default=None, help="system prompt (chat models)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def checkpoint_error(e: Exception, ckpt: Path) -> click.ClickException:
    """One line; for a folder that does not exist, say how to make one."""
    hint = "; train one first (make pretrain, make sft) or pass --ckpt" if not ckpt.exists() else ""
    return click.ClickException(f"{e}{hint}")


def load(ckpt: Path, device: str, dtype: str) -> LoadedModel:
    try:
        loaded = load_for_generation(ckpt, device, dtype)
    except CheckpointError as e:
        raise checkpoint_error(e, ckpt) from None
    c = loaded.model.config
    kind = "chat model (SFT)" if loaded.chat else "base model"
    console.print(f"[dim]{ckpt}: {kind}, {c.n_layer}x{c.n_embd}, context {c.block_size}, "
                  f"step {loaded.info.get('step')}, on {loaded.engine.device}[/]")
    return loaded


def params_from(num_samples: int = 1, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=kw["max_new_tokens"], temperature=kw["temperature"], top_k=kw["top_k"],
                          top_p=kw["top_p"], repetition_penalty=kw["repetition_penalty"], seed=kw["seed"],
                          num_samples=num_samples)


def prompt_ids(loaded: LoadedModel, prompt: str, system: str | None) -> list[int]:
    """A chat model gets one ChatML user turn and the assistant header; a base model the raw text."""
    tok = loaded.tokenizer
    if loaded.chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        try:
            return render_prompt(messages, tok)
        except ChatFormatError as e:
            raise click.UsageError(str(e)) from None
    if system:
        console.print("[yellow]--system is ignored: a base model continues text[/]")
    return tok.encode(prompt) or [tok.eot_id]  # an empty prompt starts a new document


def ended(reason: str, stop: int | None, tok) -> str:
    return tok.decode([stop]) if reason == "stop" else "max-new-tokens"


@cli.command()
@click.option("--prompt", default="数学是", show_default=True, help="text to continue, or the user message for a chat model")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="samples of the same prompt, generated as one batch")
@model_options
def sample(ckpt: Path, prompt: str, num_samples: int, device: str, dtype: str, system: str | None, **kw) -> None:
    """Generate from a prompt: a completion for a base model, one reply for a chat model.

    A base model stops at <|endoftext|>, a chat model (trained with `train sft`) at <|im_end|>. Text
    streams to stdout as it is generated; the model line and the timing go to stderr.
    """
    loaded = load(ckpt, device, dtype)
    params = params_from(num_samples, **kw)
    ids = prompt_ids(loaded, prompt, system)
    tok, engine = loaded.tokenizer, loaded.engine
    shown_prompt = "" if loaded.chat else prompt
    t0 = time.perf_counter()
    if num_samples == 1:
        run = engine.stream(ids, params)
        click.echo(shown_prompt, nl=False)
        try:
            for piece in stream_text(row_tokens(run), tok):
                click.echo(piece, nl=False)
        except KeyboardInterrupt:
            click.echo("")
            console.print("[yellow](interrupted)[/]")
            return
        click.echo("")
        n_new = run.n_new[0]
        reasons = [ended(run.finish[0], run.stop_token[0], tok)]
    else:
        with console.status(f"generating {num_samples} samples ..."):
            completions = engine.generate(ids, params)
        for i, c in enumerate(completions, 1):
            console.print(f"[bold]── sample {i}/{num_samples} ──[/]")
            click.echo(shown_prompt + tok.decode(c.tokens))
        n_new = sum(len(c.tokens) for c in completions)
        reasons = [ended(c.finish_reason, c.stop_token, tok) for c in completions]
    dt = time.perf_counter() - t0
    console.print(f"[dim]{len(ids)} prompt tokens, {n_new} new tokens in {dt:.1f}s ({n_new / dt:.1f} tokens/s); "
                  f"ended at: {', '.join(reasons)}[/]")


@cli.command()
@click.option("--message", "messages", multiple=True,
              help="send this message instead of reading the terminal (repeatable; /reset and /exit work too)")
@model_options
def chat(ckpt: Path, messages: tuple[str, ...], device: str, dtype: str, system: str | None, **kw) -> None:
    """Multi-turn chat in the terminal. Type /reset to clear the history, /exit (or Ctrl-D) to leave.

    The history is ChatML, as in SFT; when it no longer fits the model's context the oldest turns
    are left out, whole (the system prompt stays).
    """
    loaded = load(ckpt, device, dtype)
    if not loaded.chat:
        console.print(f"[yellow]{ckpt} is a base model (not fine-tuned for chat): replies will be text continuations[/]")
    session = ChatSession(loaded.engine, loaded.tokenizer, params_from(1, **kw), system=system)
    if not messages:
        with contextlib.suppress(ImportError):  # line editing and history for input(), where available
            import readline  # noqa: F401
        console.print("[dim]/reset clears the history, /exit or Ctrl-D leaves[/]")

    def write(text: str) -> None:
        click.echo(text, nl=False)

    replies = run_chat(session, messages or None, write, lambda text: console.print(f"[dim]{text}[/]"))
    console.print(f"[dim]{replies} {'reply' if replies == 1 else 'replies'}[/]")


@cli.command()
@click.option("--ckpt", type=click.Path(path_type=Path), default=Path("runs/sft"), show_default=True,
              help="run folder (runs/sft) or its checkpoint/ folder")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="folder to write (replaced if it is an earlier export)")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="weight precision in model.safetensors")
def export(ckpt: Path, out: Path, dtype: str) -> None:
    """Write a Hugging Face GPT2LMHeadModel folder: config, weights, tokenizer, generation config."""
    t0 = time.perf_counter()
    try:
        with console.status(f"exporting {ckpt} to {out} ..."):
            summary = export_hf(ckpt, out, dtype)
    except (CheckpointError, ExportError) as e:
        raise checkpoint_error(e, ckpt) from None
    kind = "chat" if summary["chat"] else "base"
    files = sorted(p for p in out.iterdir() if p.is_file())
    listing = ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in files)
    console.print(f"exported a {kind} model ({summary['params'] / 1e6:.1f}M params, {dtype}) to {out} in "
                  f"{time.perf_counter() - t0:.1f}s: {listing}; stop ids {summary['stop_ids']}")
    if not summary["tokenizer"]:
        console.print("[yellow]this tokenizer has no Hugging Face form: no tokenizer files were written[/]")


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
    except (CheckpointError, GGUFExportError) as e:
        raise checkpoint_error(e, ckpt) from None
    kind = "chat model (ChatML template, stops at <|im_end|>)" if summary["chat"] else "base model (no chat template)"
    console.print(f"wrote {summary['out']} ({summary['bytes'] / 1e6:.1f} MB, {type_name}) in {time.perf_counter() - t0:.1f}s: "
                  f"{summary['name']!r}, a {kind}, {summary['n_vocab']} tokens, context {summary['context']}")
    return summary


@cli.command()
@click.option("--ckpt", type=click.Path(path_type=Path), default=Path("runs/sft"), show_default=True,
              help="run folder (runs/sft) or its checkpoint/ folder")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="GGUF file to write [default: <run folder>/model-<type>.gguf]; replaced only if an earlier export")
@click.option("--type", "type_name", type=click.Choice(list(GGUF_TYPES)), default="f16", show_default=True,
              help="weights: f32 (exact), f16 (half the size), q8_0 (a quarter, 8-bit blocks)")
def gguf(ckpt: Path, out: Path | None, type_name: str) -> None:
    """Write one GGUF file for llama.cpp, LM Studio and Ollama (architecture gpt2, Qwen2's vocabulary).

    llama.cpp does not stop a GPT-2 model at its context: keep prompt + reply within it
    (llama-cli / llama-server -c <context>), as printed at the end.
    """
    s = write_gguf_file(ckpt, out, type_name)
    ctx, n = s["context"], s["context"] // 2
    console.print(f"run it with llama.cpp:  llama-cli -m {shlex.quote(s['out'])} -c {ctx} -n {n}   "
                  f"(or llama-server ... -c {ctx}); prompt + reply must fit in {ctx} tokens")


@cli.command()
@click.option("--ckpt", type=click.Path(path_type=Path), default=Path("runs/sft"), show_default=True,
              help="run folder (runs/sft) or its checkpoint/ folder")
@click.option("--type", "type_name", type=click.Choice(list(GGUF_TYPES)), default="f16", show_default=True,
              help="GGUF weights: f32, f16 or q8_0")
def ollama(ckpt: Path, type_name: str) -> None:
    """Write the GGUF and an Ollama Modelfile beside it, then print the `ollama create` command."""
    s = write_gguf_file(ckpt, None, type_name)
    try:
        modelfile = write_modelfile(s["out"], s["chat"], s["context"], source=str(ckpt))
    except (ModelfileError, OSError) as e:
        raise click.ClickException(str(e)) from None
    name = ollama_model_name(s["name"])
    console.print(f"wrote {modelfile}. Import and run it with Ollama:")
    click.echo(f"ollama create {name} -f {shlex.quote(str(modelfile))}\nollama run {name}")
