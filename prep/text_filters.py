"""Quality filters for web text in Chinese: each optional, each a reason a document is counted under.

* ``low_cjk``: the share of CJK ideographs among the non-whitespace characters is below ``min_cjk``
  (pages that are mostly code, URLs, English or mojibake);
* ``repeated_lines``: the share of non-blank lines that repeat an earlier line of the same document
  is above ``max_repeated_lines`` (menus, navigation bars, spam lists);
* ``repeated_char``: the most frequent non-whitespace character's share is above ``max_char_share``
  ("哈哈哈哈", "！！！！", runs of filler). In ordinary Chinese the most frequent character (的, ，
  or 。) holds about 4-7%.

Shares are fractions in [0, 1]. None switches a filter off. The checks run in the order above and the
first that fails names the reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# CJK Unified Ideographs, Extension A, Compatibility Ideographs, Extensions B-H (the SMP/TIP planes).
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_SPACE = re.compile(r"\s+")


def cjk_share(text: str) -> float:
    """CJK ideographs / non-whitespace characters (0.0 for a text of whitespace only)."""
    visible = _SPACE.sub("", text)
    return (len(visible) - len(_CJK.sub("", visible))) / len(visible) if visible else 0.0


def repeated_line_share(text: str) -> float:
    """Non-blank lines that repeat an earlier line (after stripping) / non-blank lines."""
    lines = [s for s in (line.strip() for line in text.splitlines()) if s]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


def top_char_share(text: str) -> float:
    """The most frequent non-whitespace character's count / non-whitespace characters."""
    visible = _SPACE.sub("", text)
    return Counter(visible).most_common(1)[0][1] / len(visible) if visible else 0.0


@dataclass(frozen=True)
class QualityFilters:
    min_cjk: float | None = None
    max_repeated_lines: float | None = None
    max_char_share: float | None = None

    def reason(self, text: str) -> str | None:
        """The reason `text` is dropped, or None to keep it."""
        if self.min_cjk is not None and cjk_share(text) < self.min_cjk:
            return "low_cjk"
        if self.max_repeated_lines is not None and repeated_line_share(text) > self.max_repeated_lines:
            return "repeated_lines"
        if self.max_char_share is not None and top_char_share(text) > self.max_char_share:
            return "repeated_char"
        return None
