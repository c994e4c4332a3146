"""A checkpoint carries its tokenizer, so a run folder moved anywhere still samples, serves and exports.

Qwen2's tokenizer (and the test ``bytes`` one) is rebuilt offline from the installed package: its identity
in ``model.json`` is enough. Any other tokenizer named by a folder (a cut vocabulary from ``prep vocab``
or ``--recipe modern``, a local Hugging Face folder) has its files copied into ``tokenizer/`` inside the
checkpoint folder when the checkpoint is written, and loading prefers that copy, checked against the
identity like any other (`prep.tokenizer.check_identity`). A checkpoint written before this still loads
from the folder its identity names while that folder exists, with a note on how to pack it
(``python -m model pack --ckpt RUN``); a hub name is never fetched for a checkpoint (`local_only`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from common.outputs import MANIFEST, read_manifest, write_json_atomic
from model.io import CheckpointError, resolve_model_dir
from prep.tokenizer import (
    DEFAULT_TOKENIZER,
    ByteTokenizer,
    Tokenizer,
    TokenizerError,
    check_identity,
    load_tokenizer,
)

TOKENIZER_DIR = "tokenizer"  # inside a checkpoint folder
MAX_FILE_BYTES = 64 << 20  # a tokenizer folder's file; anything larger is not a tokenizer file


def rebuilt_offline(identity: dict) -> bool:
    """Tokenizers the project makes from its installed packages, which need no files in a checkpoint."""
    return identity.get("name") in (DEFAULT_TOKENIZER, ByteTokenizer.name)


def tokenizer_files(identity: dict, *checkpoints: Path | None) -> dict[str, bytes] | None:
    """The files of the tokenizer `identity` names, to copy into every checkpoint of a run, read once at its
    start: from the folder the identity names, else from the ``tokenizer/`` copy of one of `checkpoints`
    (the run's own, its --init). None where nothing needs copying or nothing matching is found."""
    if rebuilt_offline(identity):
        return None
    candidates = [Path(identity["name"])] + [resolve_model_dir(c) / TOKENIZER_DIR for c in checkpoints if c]
    for folder in candidates:
        if folder.is_dir() and _matches(folder, identity):
            return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
                    if p.is_file() and p.stat().st_size <= MAX_FILE_BYTES}
    return None


def _matches(folder: Path, identity: dict) -> bool:
    try:
        check_identity(identity, load_tokenizer(str(folder), local_only=True), str(folder))
    except (TokenizerError, OSError):
        return False
    return True


def write_tokenizer_files(files: dict[str, bytes] | None, model_dir: Path) -> None:
    """Copy the files (from `tokenizer_files`) into ``model_dir/tokenizer`` (a checkpoint being built)."""
    if not files:
        return
    partial = Path(model_dir) / f".{TOKENIZER_DIR}.partial"  # an interrupted copy never looks like a tokenizer
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, data in files.items():
        (partial / name).write_bytes(data)
    os.replace(partial, Path(model_dir) / TOKENIZER_DIR)


def checkpoint_tokenizer(info: dict, path: str | Path) -> Tokenizer:
    """The tokenizer of the checkpoint at `path` (``model.json`` = `info`): its own copy if it carries one,
    else the one its identity names, checked to have the very ids the model was trained with."""
    from prep.tokenizer import recorded_tokenizer

    identity, where = info.get("tokenizer"), str(path)
    own = resolve_model_dir(path) / TOKENIZER_DIR
    try:
        if isinstance(identity, dict) and own.is_dir():
            tok = load_tokenizer(str(own), local_only=True)
            check_identity(identity, tok, f"{where} ({TOKENIZER_DIR}/)")
            return tok
        tok = recorded_tokenizer(identity, where)
    except (TokenizerError, OSError) as e:
        hint = "" if own.is_dir() or not isinstance(identity, dict) else (
            " (this checkpoint names its tokenizer by path and carries no copy: put that folder back)")
        raise CheckpointError(f"{e}{hint}") from None
    if not rebuilt_offline(identity):
        print(f"note: {where} uses the tokenizer folder {identity['name']}; to carry the tokenizer inside the "
              f"checkpoint: python -m model pack --ckpt {where}", file=sys.stderr)
    return tok


def run_tokenizer(identity: dict, data: str, checkpoint: Path | None) -> Tokenizer:
    """A training run's tokenizer (for its eval samples): the copy its checkpoint or --init carries, else the
    one its data's identity names."""
    from prep.tokenizer import recorded_tokenizer

    if checkpoint is not None:
        return checkpoint_tokenizer({"tokenizer": identity}, checkpoint)
    return recorded_tokenizer(identity, data)


def pack(path: str | Path) -> Path | None:
    """Copy the tokenizer a checkpoint names into it (``model pack``); returns the folder written, or None when
    the checkpoint needs none (Qwen2's identity) or already carries it. Raises `CheckpointError`."""
    from model.io import read_model_info

    model_dir = resolve_model_dir(path)
    identity = read_model_info(model_dir).get("tokenizer")
    if not isinstance(identity, dict) or rebuilt_offline(identity) or (model_dir / TOKENIZER_DIR).is_dir():
        return None
    files = tokenizer_files(identity)
    if files is None:
        raise CheckpointError(f"{model_dir}: its tokenizer folder {identity.get('name')} is gone or holds other ids; "
                              "nothing to copy")
    write_tokenizer_files(files, model_dir)
    manifest = read_manifest(model_dir)  # the checkpoint's own files now include these (common.outputs)
    if manifest is not None:
        added = [f"{TOKENIZER_DIR}/{name}" for name in files]
        write_json_atomic(model_dir / MANIFEST, {**manifest, "files": sorted({*manifest["files"], *added})})
    return model_dir / TOKENIZER_DIR
