"""Near-duplicate removal: MinHash over character n-grams, LSH to find candidates (the `rensa` library).

Web corpora hold the same page many times with small edits (a date, a counter, a footer), which exact
dedup cannot see. How a prep run removes them:

* **in the workers**, `NearDedupConfig.sketches` turns each document into a MinHash signature of
  ``num_perm`` 32-bit slots over the set of its character ``ngram``-grams (after dropping whitespace and
  lower-casing, so layout and case never make two pages differ);
* **in the main process**, documents arrive in input order; `NearDedup.is_duplicate` keeps a document
  unless an already kept one has an estimated Jaccard similarity >= ``threshold`` (candidates come from
  LSH; each is checked against the threshold, so the LSH's false positives never drop a document).
  The first document of a cluster is kept, and the same documents are kept on every run and for any
  worker count. A document dropped here is never a candidate for later ones (its original is).

LSH splits the signature into bands; two documents become candidates when a band matches. We use the
fewest bands that still find >= 90% of the pairs that sit exactly at the threshold (16 bands of 8 rows
for 0.8; more bands for lower thresholds, each costing memory). Memory is what the index keeps per
**kept** document, its signature (512 bytes), key and band hashes: measured at 1M documents
(``bench/prep.py --kind near-dedup``), 2.0 KB with 8 bands (threshold 0.95), 3.3 KB with 16
(0.8-0.9), 4.6 KB with 32 (0.6-0.75), i.e. that many GB per million documents, in the main process
only (the workers need nothing extra).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version

NUM_PERM = 128
SEED = 20250101  # a fixed seed: signatures (so the kept documents) are the same on every run
MIN_RECALL_AT_THRESHOLD = 0.9
MAX_EXAMPLES = 5


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> int:
    """The fewest bands (dividing `num_perm`) with which a pair at exactly `threshold` is a candidate >= 90%."""
    for bands in (b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1.0 - (1.0 - threshold**rows) ** bands >= MIN_RECALL_AT_THRESHOLD:
            return bands
    return num_perm


@dataclass(frozen=True)
class NearDedupConfig:
    """What both sides agree on; picklable, so it travels to the workers."""

    threshold: float = 0.8
    ngram: int = 5
    num_perm: int = NUM_PERM

    @property
    def bands(self) -> int:
        return lsh_bands(self.threshold, self.num_perm)

    def grams(self, text: str) -> list[bytes]:
        """The document's character n-grams (UTF-32 slices: one fixed width per character, no Python str per gram)."""
        data = "".join(text.split()).lower().encode("utf-32-le", "surrogatepass")
        width = 4 * self.ngram
        return [data[i : i + width] for i in range(0, max(len(data) - width, 0) + 4, 4)]

    def sketches(self, texts: list[str]) -> list:
        """One `rensa.RMinHash` per text (runs in the workers; RMinHash objects pickle to ~0.7 KB)."""
        from rensa import RMinHash

        if not texts:
            return []
        return RMinHash.from_token_sets([self.grams(t) for t in texts], self.num_perm, SEED)

    def describe(self) -> dict:
        return {"threshold": self.threshold, "ngram": self.ngram, "num_perm": self.num_perm, "bands": self.bands,
                "library": f"rensa {version('rensa')}"}


@dataclass
class NearDedup:
    """The main-process index: documents in input order, each kept unless similar to a kept one."""

    config: NearDedupConfig
    checked: int = 0
    removed: int = 0
    examples: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        from rensa import RMinHashDeduplicator

        c = self.config
        self.index = RMinHashDeduplicator(c.threshold, c.num_perm, True, c.bands, SEED)

    def is_duplicate(self, sketch, location: str) -> bool:
        """True if an earlier kept document is similar (the document is then dropped), else index it and keep it."""
        self.checked += 1
        key = f"{self.checked} {location}"  # unique, and orders candidates by input order
        if self.index.add(key, sketch):
            return False
        self.removed += 1
        if len(self.examples) < MAX_EXAMPLES:
            first = min(self.index.get_duplicates(sketch), key=lambda k: int(k.split(" ", 1)[0]))
            self.examples.append({"removed": location, "kept": first.split(" ", 1)[1]})
        return True

    def to_meta(self) -> dict:
        return {**self.config.describe(), "checked": self.checked, "removed": self.removed,
                "examples": self.examples}
