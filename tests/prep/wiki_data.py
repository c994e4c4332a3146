"""Hand-made wiki shards for the prep tests: brightmart JSON lines and raw WikiExtractor text."""

from __future__ import annotations

import json
from pathlib import Path

from prep.tokenfile import open_token_folder


def article(doc_id: str, title: str, body: str) -> dict:
    """A brightmart record: text is the title, a blank line, then the body."""
    return {"id": doc_id, "url": f"https://zh.wikipedia.org/wiki?curid={doc_id}", "title": title,
            "text": f"{title}\n\n{body}\n" if body else f"{title}\n"}


def line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def corpus(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct articles of varied length (deterministic)."""
    words = ["数学", "物理", "历史", "语言", "城市", "河流", "音乐", "电影", "铁路", "车站", "。", "，", "1987年"]
    out = []
    for i in range(n):
        k = (i * 7919 + seed) % 97
        body = "".join(words[(i + j * k) % len(words)] for j in range(5 + k * 3))
        out.append(article(str(1000 + i), f"条目{i}", f"第{i}条：{body}"))
    return out


def write_corpus(root: Path, n: int, shards: int = 3, seed: int = 0) -> Path:
    """`n` articles spread over AA/wiki_00.. and AB/wiki_00.., as brightmart lays them out."""
    arts = corpus(n, seed)
    for s in range(shards):
        folder = "AA" if s < 2 else "AB"
        write(root / folder / f"wiki_{s:02d}", b"".join(line(a) for a in arts[s::shards]))
    return root


def folder_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def decoded_docs(path: Path, tok, split: str = "train") -> list[str]:
    s = open_token_folder(path).split(split)
    return [tok.decode(s.doc(i)) for i in range(s.n_docs)]


def slow_parse(chunk, specials, delay: float):
    """parse_wiki, slowly: lets a test interrupt a run that is surely mid-way."""
    import time

    from prep.wiki import parse_wiki

    time.sleep(delay)
    return parse_wiki(chunk, specials)


def failing_parse(chunk, specials, fail_at: int):
    """parse_wiki that raises on the chunk starting at line `fail_at` or later: a bug mid-run."""
    from prep.wiki import parse_wiki

    if chunk.first_line >= fail_at:
        raise RuntimeError("boom")
    return parse_wiki(chunk, specials)


SLOW_RUN = """
import functools, sys
from pathlib import Path
import click
from common.cli import one_line_errors
from prep.pipeline import PrepJob, run_prep
from prep.wiki import wiki_source
from tests.prep.wiki_data import slow_parse

job = PrepJob(source=wiki_source(sys.argv[1], chunk_bytes=2048), parse=functools.partial(slow_parse, delay=0.25),
              out=Path(sys.argv[2]), kind="pretrain", options={"command": "wiki"}, tokenizer="bytes",
              workers=2, show_progress=False)

@click.command()
@one_line_errors
def main():
    run_prep(job)

main(args=[])
"""
