"""Serving throughput: continuous batching vs serving the same requests one at a time.

    python -m bench.serve                          # the tiny shape and a mid-sized one, random weights, CPU
    python -m bench.serve --shapes mid --requests 16 --new-tokens 96
    python -m bench.serve --device cuda --shapes mini

For each model shape, two real servers (`python -m model serve`, each its own process) get the same
`--requests` streamed chat requests (greedy, prompts from the bundled wiki sample):

* one at a time: a server started with ``--max-batch 1``, one client sending the requests in turn,
  which is what serving without batching gives;
* batched: the default server (``--max-batch 8``), with 1, 4 and 8 clients sending at once.

Printed per run: the median time to the first token, and the aggregate tokens/s (every completion
token of every request over the wall time of the run), with its ratio to one at a time. Runs are
interleaved and the best of ``--repeat`` kept, since a shared machine is noisy. Goal: >= 2x aggregate
tokens/s at 4 clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench.generate import prompt_texts
from model.archs import build, config_from_dict
from model.io import save_model
from prep.tokenizer import load_tokenizer, pad_vocab_size

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {  # (model shape, new tokens per request: a tiny block holds fewer)
    "tiny": (dict(n_layer=2, n_head=4, n_embd=128, block_size=64), 32),  # train's tiny preset
    "mid": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256), 64),
    "mini": (dict(n_layer=12, n_head=12, n_embd=768, block_size=256), 64),  # the model of record
}
CLIENTS = (1, 4, 8)


def questions(n: int) -> list[str]:
    """Short questions cut from the bundled wiki sample's articles, one per request."""
    return [f"{text.replace(chr(10), '')[:24]}是什么？" for text in prompt_texts(n)]


class ServerProcess:
    """`python -m model serve` on a free port, until `stop`."""

    def __init__(self, ckpt: Path, device: str, max_batch: int):
        cmd = [sys.executable, "-m", "model", "serve", "--ckpt", str(ckpt), "--port", "0", "--name", "bench",
               "--device", device, "--max-batch", str(max_batch)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "COLUMNS": "200"})
        for line in self.proc.stderr:
            if "API base URL" in line:
                self.api = line.split()[3]
                # keep reading what it says, so a full pipe never blocks it
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return
        raise click.ClickException(f"the server did not start (exit code {self.proc.wait()})")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


@dataclass
class Run:
    seconds: float
    tokens: int
    first_token_s: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


async def one_request(client: httpx.AsyncClient, api: str, question: str, new_tokens: int) -> tuple[float, int]:
    """(seconds to the first content delta, completion tokens) of one streamed chat request."""
    body = {"model": "bench", "messages": [{"role": "user", "content": question}], "max_tokens": new_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", api + "/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - start), tokens


async def serve_all(api: str, items: list[str], clients: int, new_tokens: int) -> Run:
    """Send every question, `clients` at a time (each client sends its next one when the last is done)."""
    todo = list(enumerate(items))
    results: list[tuple[float, int]] = []

    async def client_loop(client):
        while todo:
            _, question = todo.pop(0)
            results.append(await one_request(client, api, question, new_tokens))

    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
    return Run(seconds, sum(t for _, t in results), [f for f, _ in results])


def make_checkpoint(folder: Path, shape: dict) -> Path:
    tok = load_tokenizer("qwen2")
    torch.manual_seed(0)
    model = build(config_from_dict({"vocab_size": pad_vocab_size(len(tok)), **shape}))
    save_model(folder / "checkpoint", model, tok.identity(), "sft", step=0)
    return folder


@click.command()
@click.option("--shapes", default="tiny,mid", show_default=True, help=f"comma-separated, of {', '.join(SHAPES)}")
@click.option("--requests", "n_requests", default=8, show_default=True, help="requests per run")
@click.option("--new-tokens", type=int, default=None, help="max_tokens per request [default: per shape, 32 or 64]")
@click.option("--repeat", default=2, show_default=True, help="runs per setting; the best is kept")
@click.option("--device", default="cpu", show_default=True)
def main(shapes: str, n_requests: int, new_tokens: int | None, repeat: int, device: str) -> None:
    """Time to first token and aggregate tokens/s: batched serving at 1, 4, 8 clients vs one at a time."""
    console = Console()
    names = [s.strip() for s in shapes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        raise click.UsageError(f"unknown shapes {unknown}; choose from {', '.join(SHAPES)}")
    console.print(f"{n_requests} streamed chat requests per run, greedy, random weights, Qwen2 vocabulary, "
                  f"device {device}, {os.cpu_count()} CPUs; best of {repeat}")
    for name in names:
        shape, default_tokens = SHAPES[name]
        with tempfile.TemporaryDirectory() as tmp:
            bench_shape(console, name, make_checkpoint(Path(tmp), shape), new_tokens or default_tokens,
                        n_requests, repeat, device)


def bench_shape(console: Console, name: str, ckpt: Path, new_tokens: int, n_requests: int, repeat: int,
                device: str) -> None:
    items = questions(n_requests)
    servers = {"one at a time": ServerProcess(ckpt, device, 1), "batched": ServerProcess(ckpt, device, 8)}
    settings = [("one at a time", 1)] + [("batched", c) for c in CLIENTS]
    best: dict[tuple[str, int], Run] = {}
    try:
        for server in servers.values():  # warm-up, not timed
            asyncio.run(serve_all(server.api, items[:1], 1, 4))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(name, total=repeat * len(settings))
            for _ in range(repeat):
                for mode, clients in settings:
                    progress.update(task, description=f"{name}: {mode}, {clients} client(s)")
                    run = asyncio.run(serve_all(servers[mode].api, items, clients, new_tokens))
                    if (mode, clients) not in best or run.rate > best[mode, clients].rate:
                        best[mode, clients] = run
                    progress.advance(task)
    finally:
        for server in servers.values():
            server.stop()
    report(console, name, best, new_tokens)


def report(console: Console, name: str, best: dict[tuple[str, int], Run], new_tokens: int) -> None:
    shape = SHAPES[name][0]
    table = Table(title=f"{name}: {shape['n_layer']}x{shape['n_embd']}, block {shape['block_size']}, "
                        f"max_tokens {new_tokens}")
    for col in ("serving", "clients", "first token (median)", "aggregate tokens/s", "vs one at a time"):
        table.add_column(col, justify="right")
    base = best["one at a time", 1].rate
    for (mode, clients), run in best.items():
        table.add_row(mode, str(clients), f"{statistics.median(run.first_token_s) * 1000:,.0f} ms",
                      f"{run.rate:,.1f}", f"{run.rate / base:.2f}x")
    console.print(table)
    ratio = best["batched", 4].rate / base
    console.print(f"goal >= 2x aggregate tokens/s at 4 clients: {ratio:.2f}x {'met' if ratio >= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
