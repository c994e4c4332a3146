"""The README and docs/ hold together: every relative link names a file that exists (and, with a
`#anchor`, a heading of that page), and every `make TARGET` they show is a target of the Makefile.
Text only: no program runs, so this costs milliseconds."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
MAKE = re.compile(r"\bmake\s+([a-z][a-z0-9_-]*)(?=[\s`'\"]|$)")
TARGET = re.compile(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", re.M)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code: where links and headings live."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def code(text: str) -> str:
    """The fenced code blocks and inline code: where commands are shown (prose says "make a ...")."""
    fences = [m.group(0) for m in FENCE.finditer(text)]
    return "\n".join(fences + INLINE_CODE.findall(FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    for _, title in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base, n = slug(title), 0
        while (name := base if n == 0 else f"{base}-{n}") in found:
            n += 1
        found.add(name)
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        name = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            broken.append(f"{page.name}: {target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.name}: {target} (no heading with that anchor in {name})")
    return broken


def make_targets() -> set[str]:
    """The Makefile's targets and those of the files it includes (stages.mk: the stage registry's)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    included = re.findall(r"^include\s+(\S+)\s*$", makefile, re.M)
    text = "\n".join([makefile, *((ROOT / name).read_text(encoding="utf-8") for name in included)])
    return {name for names in TARGET.findall(text) for name in names.split()}


def test_slug_follows_github():
    assert slug("2c. Qwen2's vocabulary cut to your corpus: `make vocab`") == \
        "2c-qwen2s-vocabulary-cut-to-your-corpus-make-vocab"
    assert slug("Will it fit? `make plan` and `micro_batch_size=auto`") == \
        "will-it-fit-make-plan-and-micro_batch_sizeauto"
    assert slug("zh-mini-llm · 从零训练一个中文 GPT") == "zh-mini-llm--从零训练一个中文-gpt"


def test_the_checks_can_fail(tmp_path, monkeypatch):
    text = "# Top\n\n[ok](#top) [bad](#nowhere) [gone](missing.md) `[code](missing.md)`\n"
    fake = tmp_path / "docs" / "README.md"
    fake.parent.mkdir()
    fake.write_text(text, encoding="utf-8")
    monkeypatch.setattr("tests.test_docs.ROOT", tmp_path)
    assert broken_links(fake) == ["README.md: #nowhere (no heading with that anchor in docs/README.md)",
                                  "README.md: missing.md (no such file)"]
    assert MAKE.findall(code("make a model: `make pretrain PRESET=tiny` then `make nope`")) == ["pretrain", "nope"]


def test_every_relative_link_and_anchor_exists():
    broken = [line for page in pages() for line in broken_links(page)]
    assert not broken, "\n".join(broken)


def test_every_make_target_shown_exists():
    targets = make_targets()
    missing = sorted({f"{page.name}: make {name}" for page in pages()
                      for name in MAKE.findall(code(page.read_text(encoding="utf-8"))) if name not in targets})
    assert not missing, "\n".join(missing)


def test_the_readme_reads_in_ten_minutes():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
