"""How fast is prep? Each figure is measured in the same run as the baseline it is compared with.

    python -m bench.prep [--wiki DIR] [--sft PATH] [--kind wiki|sft|text|near-dedup|all] [--workers N] [--repeat 3]

For wiki (default input: ../shared/data/wiki_zh, else the bundled sample_data/wiki_zh):

* pipeline:        `prep wiki` end to end (parse, encode, dedup, split, write), every core;
* tokenizer alone: parse + NFC + tiktoken ``encode_ordinary_batch`` on every core, nothing written:
                   the ceiling the pipeline should reach (goal: ratio >= 0.9);
* AutoTokenizer:   ``AutoTokenizer.encode`` per document in one process, the seed project's way
                   (goal: pipeline >= 5x), on the first ``--baseline-mb`` of input.

For sft (default input: ../shared/data/belle, else the bundled sample_data/belle):

* pipeline:        `prep sft` end to end (parse rows, split turns, ChatML + masks, encode, write);
* tokenizer alone: JSON decode + NFC + ``encode_ordinary_batch`` of every string in every row, on
                   every core, nothing written (goal: ratio >= 0.9).

For text (inputs made from the wiki sample's article texts: ``{"id", "text"}`` as JSON lines, and as one
Parquet file with row groups of 1,000 rows, pyarrow's default snappy compression):

* pipeline:        `prep text` end to end on the JSON lines, and on the Parquet file;
* tokenizer alone: read the file (json.loads per line / pyarrow), NFC, ``encode_ordinary_batch`` on
                   every core, nothing written (goal: ratio >= 0.9 for each);
* --near-dedup:    `prep text --near-dedup` on the JSON lines; its extra time over the plain pipeline,
                   per GB of input, is the cost of near-dedup (extrapolated linearly: signatures are
                   per byte and the index per document; the index's own per-document cost, which grows
                   slowly with its size, is measured at 1M documents in docs/prep.md).

For near-dedup (``--index-docs``, default 1M): the main process's index alone, fed distinct signatures as
the workers would send them (pickled), for thresholds that need 8, 16 and 32 LSH bands: memory (RSS growth)
and time per document.

Every phase runs in a fresh child process, so its peak RSS is its own (main process, and the largest worker
where there are workers). Rates are input MB/s (the JSON lines read) and tokens/s; the best of ``--repeat``
runs is kept, since a shared machine is noisy. A new kind of input adds one function to `SECTIONS`."""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def default_wiki() -> Path:
    shared = SHARED / "data" / "wiki_zh"
    return shared if shared.is_dir() else ROOT / "sample_data" / "wiki_zh"


def default_hf_tokenizer(tmp: Path) -> Path:
    """The real Qwen2 files where present, else our own tokenizer saved in Hugging Face format (offline)."""
    real = SHARED / "qwen2-tokenizer"
    if (real / "vocab.json").is_file():
        return real
    from prep.hf_tokenizer_files import save_hf_tokenizer
    from prep.tokenizer import load_tokenizer

    save_hf_tokenizer(load_tokenizer("qwen2"), tmp / "qwen2-hf")
    return tmp / "qwen2-hf"


def default_sft() -> Path:
    shared = SHARED / "data" / "belle"
    return shared if shared.is_dir() else ROOT / "sample_data" / "belle"


def sft_files(sft: Path) -> list[Path]:
    from prep.sft import SftSource

    return [p for p, _ in SftSource(sft).files]


def wiki_files(wiki: Path) -> list[Path]:
    from prep.wiki import wiki_source

    return [p for p, _ in wiki_source(wiki).files]


# ---- phases: each runs in its own process and returns seconds, input bytes and tokens ----

def timed_prep(run: Callable[..., dict], src: str, workers: int, **options) -> dict:
    """One prep run end to end (the tokenizer loaded before the clock starts): seconds, input bytes, tokens."""
    from prep.tokenizer import load_tokenizer

    load_tokenizer("qwen2")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        meta = run(src, Path(tmp) / "out", workers=workers, show_progress=False, console=Console(file=io.StringIO()),
                   **options)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": sum(s["bytes"] for s in meta["sources"]),
            "tokens": sum(s["tokens"] for s in meta["splits"].values()), "meta": meta}


def phase_wiki_pipeline(wiki: str, workers: int, **_) -> dict:
    from prep.wiki import run_wiki

    return timed_prep(run_wiki, wiki, workers)


def tokenizer_alone(files: list[Path], texts_of: Callable[[bytes], list[str]], workers: int) -> dict:
    """The ceiling a pipeline is measured against: read, parse, NFC, `encode_ordinary_batch`; nothing written."""
    from prep.tokenizer import load_tokenizer

    enc = load_tokenizer("qwen2").encoding
    t0 = time.perf_counter()
    n_bytes = n_tokens = 0
    for path in files:
        data = path.read_bytes()
        n_bytes += len(data)
        texts = [unicodedata.normalize("NFC", t) for t in texts_of(data)]
        n_tokens += sum(map(len, enc.encode_ordinary_batch(texts, num_threads=workers)))
    return {"seconds": time.perf_counter() - t0, "bytes": n_bytes, "tokens": n_tokens}


def phase_wiki_tokenizer(wiki: str, workers: int, **_) -> dict:
    def texts_of(data: bytes) -> list[str]:
        return [json.loads(line)["text"] for line in data.splitlines() if line.strip()]

    return tokenizer_alone(wiki_files(Path(wiki)), texts_of, workers)


def phase_wiki_autotokenizer(wiki: str, hf_tokenizer: str, baseline_mb: float, **_) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_tokenizer)
    t0 = time.perf_counter()
    n_bytes = n_tokens = 0
    for path in wiki_files(Path(wiki)):
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    n_tokens += len(tok.encode(json.loads(line)["text"], add_special_tokens=False))
                    n_bytes += len(line)
                if n_bytes >= baseline_mb * 1e6:
                    break
        if n_bytes >= baseline_mb * 1e6:
            break
    return {"seconds": time.perf_counter() - t0, "bytes": n_bytes, "tokens": n_tokens}


def phase_sft_pipeline(sft: str, workers: int, **_) -> dict:
    from prep.sft import run_sft

    return timed_prep(run_sft, sft, workers)


def _strings(obj) -> list[str]:
    """Every string in a decoded JSON row (instruction/input/output, or the values of a conversation)."""
    if isinstance(obj, str):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    return [s for v in values for s in _strings(v)]


def phase_sft_tokenizer(sft: str, workers: int, **_) -> dict:
    def texts_of(data: bytes) -> list[str]:
        rows = json.loads(data) if data.lstrip().startswith(b"[") else [json.loads(x) for x in data.splitlines() if x.strip()]
        return [s for row in rows for s in _strings(row)]

    return tokenizer_alone(sft_files(Path(sft)), texts_of, workers)


def phase_text_pipeline(src: str, workers: int, near_dedup: bool = False, **_) -> dict:
    from prep.near_dedup import NearDedupConfig
    from prep.text import run_text

    out = timed_prep(run_text, src, workers, near_dedup=NearDedupConfig() if near_dedup else None)
    return {**out, "kept": out["meta"]["records"]["kept"]}


def phase_text_tokenizer(src: str, workers: int, **_) -> dict:
    def texts_of(data: bytes) -> list[str]:
        if src.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            return pq.read_table(pa.BufferReader(data), columns=["text"]).column("text").to_pylist()
        return [json.loads(line)["text"] for line in data.splitlines() if line.strip()]

    return tokenizer_alone([Path(src)], texts_of, workers)


def phase_near_dedup_index(docs: int, threshold: float, **_) -> dict:
    """The main process's near-dedup index alone: `docs` distinct signatures, as workers would send them."""
    import pickle
    import random

    from rensa import RMinHash

    from prep.near_dedup import SEED, NearDedup, NearDedupConfig

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()

    rng, index = random.Random(0), NearDedup(NearDedupConfig(threshold))
    before, seconds, batch = rss(), 0.0, 10_000
    for start in range(0, docs, batch):
        tokens = [[rng.randbytes(20) for _ in range(30)] for _ in range(min(batch, docs - start))]
        sent = [pickle.dumps(m) for m in RMinHash.from_token_sets(tokens, index.config.num_perm, SEED)]
        t0 = time.perf_counter()
        for k, blob in enumerate(sent):
            index.is_duplicate(pickle.loads(blob), f"data/part-{(start + k) // 100_000:05d}.parquet:{start + k + 1}")
        seconds += time.perf_counter() - t0
    return {"seconds": seconds, "docs": docs, "bands": index.config.bands, "bytes_per_doc": (rss() - before) / docs}


PHASES: dict[str, Callable[..., dict]] = {
    "wiki-pipeline": phase_wiki_pipeline, "wiki-tokenizer": phase_wiki_tokenizer,
    "wiki-autotokenizer": phase_wiki_autotokenizer, "sft-pipeline": phase_sft_pipeline,
    "sft-tokenizer": phase_sft_tokenizer, "text-pipeline": phase_text_pipeline,
    "text-tokenizer": phase_text_tokenizer, "near-dedup-index": phase_near_dedup_index,
}


def run_child(phase: str, **kw) -> dict:
    """One run of `phase` in a fresh interpreter, so the peak RSS it reports is the phase's own."""
    out = subprocess.run([sys.executable, "-m", "bench.prep", "--phase", phase, "--phase-args", json.dumps(kw)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise click.ClickException(f"phase {phase} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(phases: dict[str, tuple[str, dict]], repeat: int) -> dict[str, dict]:
    """Best of `repeat` runs per phase, interleaved (A B A B ...) so machine noise hits all phases alike."""
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for name, (phase, kw) in phases.items():
            r = run_child(phase, **kw)
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    for r in best.values():
        r |= {"mb_s": r["bytes"] / 1e6 / r["seconds"], "tok_s": r["tokens"] / r["seconds"]}
    return best


def run_phase(phase: str, args: str) -> None:
    result = PHASES[phase](**json.loads(args))
    to_mb = 1 / 1024 if sys.platform == "linux" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb
    result["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mb
    print(json.dumps(result))


# ---- sections: one per kind of input ----

def print_throughput(title: str, rows: dict[str, dict], console: Console) -> None:
    t = Table(title=title, title_justify="left")
    for col in ("", "MB/s", "tokens/s", "peak RSS main", "peak RSS worker", "input MB"):
        t.add_column(col, justify="right" if col else "left")
    for name, r in rows.items():
        worker = f"{r['worker_rss_mb']:,.0f} MB" if r["worker_rss_mb"] > 1 else "-"
        t.add_row(name, f"{r['mb_s']:.2f}", f"{r['tok_s']:,.0f}", f"{r['rss_mb']:,.0f} MB", worker,
                  f"{r['bytes'] / 1e6:.1f}")
    console.print(t)


def announce(kind: str, src: Path, files: list[Path], opts: dict, console: Console) -> None:
    size = sum(p.stat().st_size for p in files)
    console.print(f"[bold]{kind}[/]: {src} ({len(files)} files, {size / 1e6:.1f} MB), {opts['workers']} workers, "
                  f"best of {opts['repeat']}")


def section_wiki(opts: dict, console: Console) -> None:
    wiki = opts["wiki"] or default_wiki()
    announce("wiki", wiki, wiki_files(wiki), opts, console)
    with tempfile.TemporaryDirectory() as tmp:
        hf = opts["hf_tokenizer"] or default_hf_tokenizer(Path(tmp))
        kw = {"wiki": str(wiki), "workers": opts["workers"]}
        rows = measure({
            "prep wiki (pipeline)": ("wiki-pipeline", kw),
            "tokenizer alone": ("wiki-tokenizer", kw),
            "AutoTokenizer loop": ("wiki-autotokenizer", {"wiki": str(wiki), "hf_tokenizer": str(hf),
                                                          "baseline_mb": opts["baseline_mb"]}),
        }, opts["repeat"])
    print_throughput("prep wiki throughput", rows, console)
    pipe, alone, auto = rows.values()
    console.print(f"pipeline / tokenizer alone: [bold]{pipe['mb_s'] / alone['mb_s']:.2f}[/] (goal >= 0.9)")
    console.print(f"pipeline / AutoTokenizer loop: [bold]{pipe['mb_s'] / auto['mb_s']:.1f}x[/] (goal >= 5x)")


def section_sft(opts: dict, console: Console) -> None:
    sft = opts["sft"] or default_sft()
    announce("sft", sft, sft_files(sft), opts, console)
    kw = {"sft": str(sft), "workers": opts["workers"]}
    rows = measure({"prep sft (pipeline)": ("sft-pipeline", kw), "tokenizer alone": ("sft-tokenizer", kw)},
                   opts["repeat"])
    print_throughput("prep sft throughput", rows, console)
    pipe, alone = rows.values()
    console.print(f"pipeline / tokenizer alone: [bold]{pipe['mb_s'] / alone['mb_s']:.2f}[/] (goal >= 0.9; "
                  "the pipeline also writes ChatML headers and masks)")


def write_text_inputs(wiki: Path, folder: Path) -> tuple[Path, Path]:
    """The wiki sample's article texts as ``{"id", "text"}`` JSON lines and as one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for path in wiki_files(wiki):
        articles = [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        rows += [{"id": a["id"], "text": a["text"]} for a in articles]
    jsonl, parquet = folder / "text.jsonl", folder / "text.parquet"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=1000)
    return jsonl, parquet


def section_text(opts: dict, console: Console) -> None:
    wiki = opts["wiki"] or default_wiki()
    with tempfile.TemporaryDirectory() as tmp:
        jsonl, parquet = write_text_inputs(wiki, Path(tmp))
        console.print(f"[bold]text[/]: {wiki}'s texts as JSON lines ({jsonl.stat().st_size / 1e6:.1f} MB) and "
                      f"Parquet ({parquet.stat().st_size / 1e6:.1f} MB), {opts['workers']} workers, "
                      f"best of {opts['repeat']}")
        kw = {"workers": opts["workers"]}
        rows = measure({
            "prep text, JSON lines": ("text-pipeline", {"src": str(jsonl), **kw}),
            "tokenizer alone, JSON lines": ("text-tokenizer", {"src": str(jsonl), **kw}),
            "prep text, Parquet": ("text-pipeline", {"src": str(parquet), **kw}),
            "tokenizer alone, Parquet": ("text-tokenizer", {"src": str(parquet), **kw}),
            "prep text --near-dedup, JSON lines": ("text-pipeline", {"src": str(jsonl), "near_dedup": True, **kw}),
        }, opts["repeat"])
    print_throughput("prep text throughput", rows, console)
    pipe_j, alone_j, pipe_p, alone_p, near = rows.values()
    console.print(f"pipeline / tokenizer alone: JSON lines [bold]{pipe_j['mb_s'] / alone_j['mb_s']:.2f}[/], "
                  f"Parquet [bold]{pipe_p['mb_s'] / alone_p['mb_s']:.2f}[/] (goal >= 0.9)")
    extra = near["seconds"] - pipe_j["seconds"]
    gb = near["bytes"] / 1e9
    console.print(f"--near-dedup: +{extra:.2f} s on {near['bytes'] / 1e6:.1f} MB ({near['kept']:,} documents kept): "
                  f"[bold]~{extra / gb / 60:,.1f} min per GB[/] with {opts['workers']} workers "
                  f"(x{near['seconds'] / pipe_j['seconds']:.2f} the plain run; main-process peak RSS "
                  f"{near['rss_mb'] - pipe_j['rss_mb']:+,.0f} MB)")


def section_near_dedup(opts: dict, console: Console) -> None:
    """Memory and time per document of the near-dedup index, for thresholds that need 8, 16 and 32 bands."""
    t = Table(title=f"--near-dedup index in the main process, {opts['index_docs']:,} documents", title_justify="left")
    for col in ("--threshold", "bands", "memory per document", "per million documents", "time per document"):
        t.add_column(col, justify="right")
    for threshold in (0.95, 0.8, 0.7):
        r = run_child("near-dedup-index", docs=opts["index_docs"], threshold=threshold)
        t.add_row(f"{threshold}", f"{r['bands']}", f"{r['bytes_per_doc'] / 1e3:.1f} KB",
                  f"{r['bytes_per_doc'] * 1e6 / 1e9:.1f} GB", f"{r['seconds'] / r['docs'] * 1e6:.0f} µs")
    console.print(t)


SECTIONS: dict[str, Callable[[dict, Console], None]] = {
    "wiki": section_wiki, "sft": section_sft, "text": section_text, "near-dedup": section_near_dedup}


@click.command()
@click.option("--wiki", type=click.Path(exists=True, path_type=Path), default=None, help="wiki_zh folder (default: "
              "../shared/data/wiki_zh, else sample_data/wiki_zh); also the texts of the text benchmark.")
@click.option("--sft", type=click.Path(exists=True, path_type=Path), default=None,
              help="SFT file or folder (default: ../shared/data/belle, else sample_data/belle).")
@click.option("--kind", type=click.Choice([*SECTIONS, "all"]), default="all", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Default: every core.")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--baseline-mb", type=float, default=2.0, show_default=True, help="Input the AutoTokenizer loop encodes.")
@click.option("--hf-tokenizer", default=None, help="Folder for the AutoTokenizer baseline "
              "(default: ../shared/qwen2-tokenizer, else our tokenizer saved in HF format).")
@click.option("--index-docs", type=click.IntRange(min=10_000), default=1_000_000, show_default=True,
              help="near-dedup: documents put in the index (1M needs ~5 GB of memory).")
@click.option("--phase", hidden=True)  # a child process's phase (run_child)
@click.option("--phase-args", hidden=True)
def main(wiki, sft, kind, workers, repeat, baseline_mb, hf_tokenizer, index_docs, phase, phase_args) -> None:
    """Benchmark prep against its tokenizer and against a per-document AutoTokenizer loop."""
    if phase:
        run_phase(phase, phase_args)
        return
    from prep.pipeline import default_workers

    opts = {"wiki": wiki, "sft": sft, "workers": workers or default_workers(), "repeat": repeat, "baseline_mb": baseline_mb,
            "hf_tokenizer": hf_tokenizer, "index_docs": index_docs}
    console = Console()
    for name, section in SECTIONS.items():
        if kind in (name, "all"):
            section(opts, console)


if __name__ == "__main__":
    main()
