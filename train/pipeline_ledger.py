"""The ledger of ``train all`` (`train.pipeline_all`): its spec, OUT/all.json, and how inputs are fingerprinted."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.outputs import read_json, write_json_atomic

LEDGER = "all.json"


class AllError(UserError):
    """A step of ``train all`` that cannot run (changed settings, a failed stage)."""


@dataclass(frozen=True)
class AllSpec:
    wiki: str
    belle: str
    out: Path
    pref: str | None = None
    recipe: str = "modern"
    preset: str = "mini"
    heldout: str | None = None
    vocab_size: int | None = None  # the recipe's unless given (`--vocab-size`)
    val_fraction: float = 0.005
    steps: int | None = None  # every training stage's max_steps (a small test run), else the presets'
    assignments: tuple[str, ...] = ()  # --set for every training stage
    harness_tasks: str = "ceval-valid,cmmlu"
    harness_limit: int | None = None
    notes: list[str] = field(default_factory=list)  # what was skipped and why, for the report


class Ledger:
    """OUT/all.json: each step's settings (written when it starts) and its result (when it finishes)."""

    def __init__(self, out: Path):
        self.path = out / LEDGER
        self.steps: dict = read_json(self.path).get("steps", {}) if self.path.is_file() else {}

    def begin(self, name: str, settings: dict) -> dict | None:
        """The recorded result of a finished `name` with these settings (then skip it), else None (run it).
        Refuses settings other than those `name` was started or finished with."""
        recorded = self.steps.get(name)
        if recorded is not None and recorded["settings"] != settings:
            changes = _changes(recorded["settings"], settings)
            raise AllError(f"{self.path}: step {name} was {'run' if 'result' in recorded else 'started'} with other "
                           f"inputs or settings ({'; '.join(changes)}); rerun with the same ones, or use another OUT")
        if recorded is not None and "result" in recorded:
            print(f"== {name}: done before, skipped ({_brief(recorded['result'])})")
            return recorded["result"]
        self.steps[name] = {"settings": settings}
        self._write()
        print(f"== {name}")
        return None

    def finish(self, name: str, result: dict) -> dict:
        self.steps[name]["result"] = result
        self._write()
        return result

    def _write(self) -> None:
        write_json_atomic(self.path, {"format": "zh-mini-llm-all", "steps": self.steps})


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``max_steps 20 -> 30``: every leaf that differs between two settings records."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def _brief(result: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in result.items() if isinstance(v, (int, float, str)))[:160]


def input_fingerprint(spec: str) -> dict:
    """What a raw input is, by content summary: each file's path and size (a hub name is its name)."""
    path = Path(spec)
    if not path.exists():
        return {"name": spec}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{f.stat().st_size}\n".encode())
    return {"path": str(path.absolute()), "files": len(files), "digest": h.hexdigest()[:16]}


def folder_digest(folder: Path, name: str = "meta.json") -> str:
    """sha256 of a token folder's meta.json (its counts, sources, tokenizer) or a checkpoint's file."""
    return hashlib.sha256((folder / name).read_bytes()).hexdigest()[:16]


def hub_reachable() -> str | None:
    """None when the harness may fetch its tasks, else why not (HF_HUB_OFFLINE, no answer)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return "HF_HUB_OFFLINE is set"
    from model.measure.harness import hub_offline_reason

    return hub_offline_reason()
