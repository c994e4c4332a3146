"""``python -m model sample|chat|serve|pack|export|gguf|ollama|harness|bpb``: thin Click commands over
`model.generate`, `model.chat` and `model.serve.server` (here), the export formats (`model.export.cli`) and
the measures (`model.measure.cli`).

Conversation text goes to stdout as it is generated; notes and summaries go to stderr, so
``python -m model sample ... > out.txt`` keeps only the text. Errors a user can fix are one line.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click

from common.cli import FiniteFloat, UserPath, one_line_errors
from model.chat import ChatSession, run_chat
from model.cli_common import console, device_option, dtype_option, with_hint
from model.export.cli import export, gguf, ollama
from model.generate import row_tokens, stream_text
from model.io import CheckpointError
from model.loader import LoadedModel, load_for_generation
from model.measure.cli import bpb, harness
from model.sampling import MAX_NEW_TOKENS, MAX_SAMPLES, MAX_TEMPERATURE, PENALTY_RANGE, SamplingParams
from model.teach.cli import select, teach
from prep.chat_template import ChatFormatError, render_prompt

DEFAULTS = SamplingParams()
MAX_SEED = 2**63 - 1  # torch.Generator seeds are 64-bit
# Server sizes beyond any machine: refused at once rather than allocated (a cache per group of rows).
MAX_BATCH, MAX_QUEUE, MAX_BODY_KB, MAX_THREADS = 1024, 1 << 20, 1 << 20, 4096


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """Use a trained model: `sample` text, `chat` in the terminal, `serve` it over HTTP; `export` it to Hugging
    Face, `gguf` for llama.cpp / LM Studio, `ollama` for Ollama; measure it: `harness` (C-Eval, CMMLU, ...
    through lm-eval), `bpb` (bits per byte of raw text); learn from a bigger model: `select` documents by a
    teacher's scores, `teach` (store its sparse targets for kd_weight)."""


def model_options(f):
    options = [
        click.option("--ckpt", type=UserPath(), default=Path("runs/sft"), show_default=True,
                     help="run folder (runs/sft) or its checkpoint/ folder"),
        click.option("--max-new-tokens", type=click.IntRange(1, MAX_NEW_TOKENS), default=DEFAULTS.max_new_tokens,
                     show_default=True, help="stop after this many new tokens"),
        click.option("--temperature", type=FiniteFloat(0, MAX_TEMPERATURE), default=DEFAULTS.temperature, show_default=True,
                     help="0 = greedy (deterministic)"),
        click.option("--top-k", type=click.IntRange(min=0), default=DEFAULTS.top_k, show_default=True,
                     help="sample among the k likeliest tokens (0 = all)"),
        click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=DEFAULTS.top_p,
                     show_default=True, help="nucleus sampling: the likeliest tokens covering this probability"),
        click.option("--repetition-penalty", type=FiniteFloat(*PENALTY_RANGE),
                     default=DEFAULTS.repetition_penalty, show_default=True,
                     help=">1 makes tokens already in the context less likely (1 = off)"),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=DEFAULTS.seed, show_default=True,
                     help="same seed, same text"),
        click.option("--system", default=None, callback=utf8_text, help="system prompt (chat models)"),
        device_option,
        dtype_option(),
        one_line_errors,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load(ckpt: Path, device: str, dtype: str) -> LoadedModel:
    try:
        loaded = load_for_generation(ckpt, device, dtype)
    except CheckpointError as e:
        raise with_hint(e, ckpt) from None
    c = loaded.model.config
    kind = "chat model (SFT)" if loaded.chat else "base model"
    console.print(f"[dim]{ckpt}: {kind}, {c.n_layer}x{c.n_embd}, context {c.block_size}, "
                  f"step {loaded.info.get('step')}, on {loaded.engine.device}[/]")
    return loaded


def params_from(num_samples: int = 1, **kw) -> SamplingParams:
    try:
        return SamplingParams(max_new_tokens=kw["max_new_tokens"], temperature=kw["temperature"], top_k=kw["top_k"],
                              top_p=kw["top_p"], repetition_penalty=kw["repetition_penalty"], seed=kw["seed"],
                              num_samples=num_samples)
    except ValueError as e:  # the options' types check each value; this is the last word
        raise click.UsageError(str(e)) from None


def utf8_text(ctx, param, value):
    """Refuse text that is not UTF-8 (bytes the shell passed undecodable), naming the option."""
    for text in (value if isinstance(value, tuple) else (value,)):
        if text is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise click.BadParameter("is not valid UTF-8 text", ctx=ctx, param=param) from None
    return value


def prompt_ids(loaded: LoadedModel, prompt: str, system: str | None) -> list[int]:
    """A chat model gets one ChatML user turn and the assistant header; a base model the raw text."""
    tok = loaded.tokenizer
    if loaded.chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        try:
            return render_prompt(messages, tok)
        except ChatFormatError as e:
            raise click.UsageError(str(e)) from None  # e.g. a --system that ChatML cannot express
    if system:
        console.print("[yellow]--system is ignored: a base model continues text[/]")
    return tok.encode(prompt) or [tok.eot_id]  # an empty prompt starts a new document


def ended(reason: str, stop: int | None, tok) -> str:
    return tok.decode([stop]) if reason == "stop" else "max-new-tokens"


@cli.command()
@click.option("--prompt", default="数学是", show_default=True, callback=utf8_text,
              help="text to continue, or the user message for a chat model")
@click.option("--num-samples", type=click.IntRange(1, MAX_SAMPLES), default=1, show_default=True,
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
            raise SystemExit(130) from None  # 128 + SIGINT, as training and prep exit
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
@click.option("--message", "messages", multiple=True, callback=utf8_text,
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
@click.option("--ckpt", type=UserPath(), default=Path("runs/sft"), show_default=True,
              help="run folder (runs/sft) or its checkpoint/ folder")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; 0.0.0.0 lets other machines in (set --api-key then)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 = any free port")
@click.option("--api-key", envvar="MODEL_API_KEY", default=None,
              help="require 'Authorization: Bearer KEY' (or set MODEL_API_KEY)")
@click.option("--name", default=None, help="model name in the API [default: the run folder's name]")
@click.option("--max-batch", type=click.IntRange(1, MAX_BATCH), default=8, show_default=True,
              help="sequences decoded together (1 = one request at a time)")
@click.option("--max-queue", type=click.IntRange(0, MAX_QUEUE), default=32, show_default=True,
              help="requests that may wait for a free row before new ones get 503")
@click.option("--max-tokens", type=click.IntRange(1, MAX_NEW_TOKENS), default=2048, show_default=True,
              help="the most new tokens one choice may ask for")
@click.option("--max-body-kb", type=click.IntRange(1, MAX_BODY_KB), default=1024, show_default=True,
              help="larger request bodies get 413")
@click.option("--allow-origin", multiple=True,
              help="let a browser front-end on this origin call the API (CORS; repeatable, '*' = any)")
@click.option("--group-size", type=click.IntRange(1, MAX_BATCH), default=None,
              help="rows per forward pass [default: 4 on a CPU, --max-batch on a GPU]")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help="CPU threads for the model [default: all cores but one, which serves HTTP]")
@device_option
@dtype_option()
@click.option("--log-level", type=click.Choice(["warning", "info", "debug"]), default="warning", show_default=True,
              help="uvicorn's log level (info logs every request)")
@one_line_errors
def serve(ckpt: Path, host: str, port: int, api_key: str | None, name: str | None, max_batch: int, max_queue: int,
          max_tokens: int, max_body_kb: int, allow_origin: tuple[str, ...], group_size: int | None,
          threads: int | None, device: str, dtype: str, log_level: str) -> None:
    """Serve the model: an OpenAI-compatible API (/v1) and a chat page (/) until Ctrl-C.

    Requests that arrive together are decoded together in one batch. Any OpenAI client or chat
    front-end works with the base URL printed at the start.
    """
    from model.serve.server import (
        ServeError,
        ServeOptions,
        bind,
        create_app,
        run_identity,
        serve_forever,
        urls,
    )

    loaded = load(ckpt, device, dtype)
    served, created = run_identity(ckpt)
    options = ServeOptions(model_name=name or served, created=created, api_key=api_key, max_batch=max_batch,
                           max_queue=max_queue, max_body_bytes=max_body_kb * 1024, max_tokens=max_tokens,
                           group_size=group_size, threads=threads, allow_origins=list(allow_origin))
    try:
        sock = bind(host, port)
    except ServeError as e:
        raise click.ClickException(str(e)) from None  # e.g. the port is in use
    app = create_app(loaded, options)
    page, api = urls(sock)
    console.print(f"[bold]chat page:[/] {page}\n[bold]API base URL:[/] {api}   model: {options.model_name}"
                  f"{'   (API key required)' if api_key else ''}\n[dim]Ctrl-C stops[/]")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print(f"[yellow]listening on {host} without --api-key: anyone who can reach this machine can use it[/]")
    serve_forever(app, sock, log_level)
    console.print(f"[dim]stopped; {app.state.requests_served} requests served[/]")


@cli.command()
@click.option("--ckpt", required=True, type=UserPath(), help="run or checkpoint folder")
@one_line_errors
def pack(ckpt: Path) -> None:
    """Copy the tokenizer folder a checkpoint names (a cut vocabulary) inside it, so it no longer needs that
    folder. Checkpoints written now carry it already; Qwen2's tokenizer is rebuilt offline and needs nothing."""
    from model.tokenizer_files import pack as pack_tokenizer

    written = pack_tokenizer(ckpt)
    click.echo(f"copied its tokenizer into {written}" if written else f"{ckpt}: already self-contained")


cli.add_command(export)  # model/export_cli.py
cli.add_command(gguf)
cli.add_command(ollama)
cli.add_command(harness)  # model/eval_cli.py
cli.add_command(bpb)
cli.add_command(select)  # model/teach/cli.py
cli.add_command(teach)
