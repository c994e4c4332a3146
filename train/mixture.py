"""Training data from one token folder or a weighted mixture of several: ``--data wiki:0.3,web:0.7``.

The one reading of a ``--data`` value (`parse_mixture`):

* A value that names an existing folder is that one folder, whatever its name holds (``:`` or ``,``).
* A value that names a file is a shard manifest (``prep merge SHARDS --manifest FILE.json``): its folders
  (paths relative to the file) with their weights, their train tokens.
* Otherwise it is a comma-separated list of folders; surrounding spaces of an item are dropped, spaces
  inside a path are kept. An item's weight is the part after its LAST ``:`` when that part is a
  plain decimal number (``0.3``, ``2``, ``1e-1``); otherwise the whole item is the path, so
  ``runs:v2/web`` is a path and ``runs:v2/web:0.7`` is that path with weight 0.7 (so a folder named
  ``web:2024`` needs its weight written out in a mixture: ``web:2024:0.7``). Give every folder
  a weight or none (equal weights); weights are normalised to sum to 1. A path holding a comma can
  only be used alone (or through a symlink).

A weight is the share of training *blocks* drawn from that folder (`train.data.MixtureSampler`); for
pretraining every block holds ``block_size`` targets, so it is also the share of tokens. All folders
must be of one kind (pretrain or SFT) and share one tokenizer (`prep.tokenizer.check_identity`).

A run records its mixture (`Mixture.record`: each folder's path, weight, token counts and a sha256
of its ``meta.json``) in ``checkpoint/train_config.json``; `mixture_changes` says how a new
``--data`` differs from it, so a resume on other data is refused unless asked for.

Validation is per source; the mixture's figure is the weight-averaged per-source figure
(`weighted_mean`): the expected loss of a block drawn as training draws them, independent of how
many validation tokens each folder happens to hold. With one folder it is that folder's figure.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.outputs import JSONFileError, read_json
from common.paths import expand_user
from prep.tokenfile import META_NAME, SHARD_MANIFEST_KIND, Split, TokenFolder, open_token_folder
from prep.tokenizer import TokenizerError, check_identity

# a plain decimal number: what may follow the last ':' of an item as its weight
WEIGHT = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class MixtureError(UserError, ValueError):
    """A --data value that names no usable mixture, or a resume on other data. One line."""


@dataclass(frozen=True)
class SourceSpec:
    path: Path
    weight: float | None  # None: not given


def parse_mixture(text: str) -> list[SourceSpec]:
    """The folders and weights of a ``--data`` value (see the module docstring for the rule)."""
    if not text.strip():
        raise MixtureError("--data is empty; give a token folder or FOLDER:WEIGHT,FOLDER:WEIGHT")
    if Path(text).is_dir():
        return [SourceSpec(Path(text), None)]
    if Path(expand_user(text)).is_file():
        return manifest_specs(Path(expand_user(text)))
    specs = []
    for item in (part.strip() for part in text.split(",")):
        path, sep, tail = item.rpartition(":")
        weight = None
        if sep and WEIGHT.fullmatch(tail):
            weight = float(tail)
            if not (0 < weight < math.inf):
                raise MixtureError(f"--data {text!r}: {path!r} has weight {tail}; a weight must be a positive number")
        else:
            path = item
        if not path:
            raise MixtureError(f"--data {text!r}: an empty folder name (between commas, or before ':')")
        specs.append(SourceSpec(Path(expand_user(path)), weight))
    if len(specs) > 1 and len({s.weight is None for s in specs}) > 1:
        missing = ", ".join(str(s.path) for s in specs if s.weight is None)
        raise MixtureError(f"--data {text!r}: no weight for {missing}; give every folder a weight (FOLDER:0.3) or "
                           "none (equal weights)")
    return specs


def manifest_specs(path: Path) -> list[SourceSpec]:
    """The folders and weights of a shard manifest (`prep.merge.write_manifest`)."""
    try:
        record = read_json(path)
        folders = record["folders"] if isinstance(record, dict) and record.get("kind") == SHARD_MANIFEST_KIND else None
        specs = [SourceSpec(path.parent / f["path"], float(f["weight"])) for f in folders]
    except (JSONFileError, TypeError, KeyError, ValueError):
        raise MixtureError(f"--data {path}: a file, but not a shard manifest (`prep merge ... --manifest`)") from None
    if not specs or not all(0 < s.weight < math.inf for s in specs):
        raise MixtureError(f"--data {path}: a shard manifest needs folders with positive weights")
    return specs


@dataclass
class Source:
    """One folder of a mixture: a short name (for metrics), its normalised weight and the opened folder."""

    name: str
    weight: float
    folder: TokenFolder

    @property
    def path(self) -> Path:
        return self.folder.path

    def split(self, name: str) -> Split:
        return self.folder.split(name)

    def record(self) -> dict:
        splits = self.folder.meta["splits"]
        return {"name": self.name, "path": str(self.path), "weight": self.weight,
                "tokens": {name: stats.get("tokens") for name, stats in splits.items() if isinstance(stats, dict)},
                "meta_sha256": hashlib.sha256((self.path / META_NAME).read_bytes()).hexdigest()}


@dataclass
class Mixture:
    text: str  # the --data value as given
    sources: list[Source]

    @property
    def kind(self) -> str:
        return self.sources[0].folder.kind

    @property
    def tokenizer(self) -> dict:
        return self.sources[0].folder.tokenizer

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def label(self) -> str:
        """A file-name-friendly name: the folder itself, a shard manifest's own path, or ``wiki+web`` for a mixture."""
        if len(self.sources) == 1 or Path(expand_user(self.text)).is_file():
            return str(self.sources[0].path) if len(self.sources) == 1 else str(Path(self.text).with_suffix(""))
        return "+".join(self.names)

    def record(self) -> dict:
        return {"sources": [s.record() for s in self.sources]}


def data_line(mixture: Mixture, train_splits: Sequence[Split], val_starts: Sequence) -> str:
    """``1,234 tokens, val 16 blocks``, or for a mixture each folder's share, tokens and val blocks."""
    parts = [(s, split.n_tokens, len(starts)) for s, split, starts in
             zip(mixture.sources, train_splits, val_starts, strict=True)]
    if len(parts) == 1:
        return f"{parts[0][1]:,} tokens, val {parts[0][2]} blocks"
    return f"{len(parts)} folders: " + ", ".join(
        f"{s.name} {100 * s.weight:.3g}% ({n:,} tokens, val {b} blocks)" for s, n, b in parts)


def open_mixture(text: str | os.PathLike) -> Mixture:
    """Open every folder of a ``--data`` value: one kind, one tokenizer, distinct folders, weights normalised."""
    text = str(text)
    specs = parse_mixture(text)
    folders = [open_token_folder(s.path) for s in specs]  # TokenFileError names a missing or damaged one
    resolved = [f.path.resolve() for f in folders]
    if len(set(resolved)) < len(resolved):
        raise MixtureError(f"--data {text!r}: a folder appears twice; give each folder once, with its whole weight")
    first = folders[0]
    for f in folders[1:]:
        if f.kind != first.kind:
            raise MixtureError(f"--data: {first.path} is a {first.kind!r} token folder but {f.path} a {f.kind!r} "
                               "one; a mixture is all pretraining folders or all SFT folders")
        try:
            check_identity(first.tokenizer, f.tokenizer, str(first.path), f"{f.path}'s tokenizer")
        except TokenizerError as e:
            raise MixtureError(f"{e}; every folder of a mixture must be prepped with the same tokenizer") from None
    names = _names([s.path for s in specs], resolved)
    shares = normalised([s.weight if s.weight is not None else 1.0 for s in specs], text)
    return Mixture(text, [Source(n, w, f) for n, w, f in zip(names, shares, folders, strict=True)])


def normalised(weights: Sequence[float], text: str) -> list[float]:
    """Weights as shares summing to 1. A sum that overflows (1e308 + 1e308 is infinity: every share 0) is
    taken after scaling by the largest weight; a share too small to draw from is refused, not kept as 0."""
    total = sum(weights)
    if not math.isfinite(total):  # (otherwise the plain division: shares recorded by earlier runs stay equal)
        weights = [w / max(weights) for w in weights]
        total = sum(weights)
    shares = [w / total for w in weights]
    if min(shares) < 1e-9:
        raise MixtureError(f"--data {text!r}: the weights give a folder a share of {min(shares):.2g}; a share "
                           "below 1e-9 would never be drawn from: leave that folder out or raise its weight")
    return shares


def _names(paths: Sequence[Path], resolved: Sequence[Path]) -> list[str]:
    """Each folder's name (``wiki``), or the path as given where two folders share a name."""
    names = [p.name or r.name for p, r in zip(paths, resolved, strict=True)]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths, strict=True)]


def weighted_mean(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    """Σ wᵢ·vᵢ / Σ wᵢ over the sources that have a value (None where none has one).

    With one source this is its value exactly (1.0 · v / 1.0).
    """
    pairs = [(w, v) for v, w in zip(values, weights, strict=True) if v is not None]
    if not pairs:
        return None
    return sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)


def mixture_figures(losses: Sequence[float | None], bpbs: Sequence[float | None],
                    weights: Sequence[float]) -> tuple[float | None, float | None]:
    """A mixture's loss and bits per byte from its folders' (None: a folder with nothing scored).

    Bits per byte only when every scored folder has them (meta.json with byte counts), so that both
    figures average the same folders.
    """
    scored_bpbs = [b for loss, b in zip(losses, bpbs, strict=True) if loss is not None]
    bpb = weighted_mean(bpbs, weights) if None not in scored_bpbs else None
    return weighted_mean(losses, weights), bpb


def mixture_changes(saved: object, now: dict) -> tuple[list[str], list[str]]:
    """``(changes, moves)`` from a checkpoint's recorded mixture to `now` (`Mixture.record`).

    A change alters the data a resumed run would see: another number or order of folders, another
    folder content (its meta.json), another weight. A move is the same folder at another path (data_bin
    on another disk): not a change. A checkpoint from before mixtures were recorded has nothing to compare.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("sources"), list):
        return [], []
    before, after = saved["sources"], now["sources"]
    if len(before) != len(after):
        paths = lambda sources: ", ".join(str(s.get("path")) for s in sources)  # noqa: E731
        return [f"folders {paths(before)} -> {paths(after)}"], []
    changes, moves = [], []
    for old, new in zip(before, after, strict=True):
        if old.get("meta_sha256") != new["meta_sha256"]:
            same = old.get("path") == new["path"]
            what = f"{new['path']} is not the folder it was" if same else f"{old.get('path')} -> {new['path']}"
            changes.append(f"{what} (meta.json sha256 {str(old.get('meta_sha256'))[:12]} -> {new['meta_sha256'][:12]}, "
                           f"tokens {old.get('tokens')} -> {new['tokens']})")
        elif old.get("path") != new["path"]:
            moves.append(f"{old.get('path')} -> {new['path']}")
        if old.get("weight") != new["weight"]:
            changes.append(f"weight of {new['name']} {_share(old.get('weight'))} -> {_share(new['weight'])}")
    return changes, moves


def _share(weight: object) -> str:
    return f"{weight:.4g}" if isinstance(weight, (int, float)) else str(weight)
