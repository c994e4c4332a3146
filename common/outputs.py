"""Everything the project writes goes through here: typed, locked, built beside, swapped into place.

The rules (docs/safety.md, "What is safe"), each enforced in one place:

* **Build beside, then swap.** `OutputFolder` builds ``.NAME.partial`` next to ``NAME`` and renames it
  into place only when complete, so a crash, Ctrl-C or kill -9 leaves the previous folder or the new
  one, never a mix; `atomic_file` / `write_json_atomic` do the same for single files. Leftovers of a
  killed run are cleaned up (or, for the one moment between the two renames of a swap, put back) by
  the next run.
* **Replace only what we made.** A folder is replaced only if it is this project's output of the same
  kind and holds nothing but the files that output wrote (its manifest, ``.zh-mini-llm.json``, lists
  them; folders from before the manifest are recognised by `legacy_files`). Anything else in the way
  is refused with one line and left untouched.
* **One writer per output.** The writer holds an OS lock (``flock`` on ``.NAME.lock`` beside it). The
  kernel releases it when the process dies, so a kill -9 never leaves a stale lock; a second writer
  is refused at once with the holder's pid.
* **A full or read-only disk** (ENOSPC, EDQUOT, EROFS, EACCES, EPERM) is one line (`OutputError`);
  temporaries are removed and the previous good state stays.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from common.errors import UserError

MANIFEST = ".zh-mini-llm.json"
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class OutputError(UserError):
    """An output cannot be written: refused (not ours, in use) or the disk said no. One line."""


class JSONFileError(UserError, ValueError):
    """A JSON file that cannot be read back: missing, not UTF-8, not JSON, or nested absurdly deep."""


def read_json(path: str | os.PathLike) -> object:
    """A JSON file of ours (meta.json, model.json, ...), which a user or a crash may have damaged."""
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        raise JSONFileError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise JSONFileError(f"{path}: not valid JSON ({reason})") from None


def disk_error(e: OSError, what: str) -> OutputError | None:
    """A one-line `OutputError` for a full, read-only or forbidden disk; None for other errors."""
    if e.errno not in DISK_ERRNOS:
        return None
    where = e.filename or what
    return OutputError(f"{where}: {e.strerror or e}; {what} was not written (anything there before is intact)")


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(path: Path) -> None:
    """Delete a file or folder of ours if it exists (best effort: it runs while handling another error)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# -- locks -----------------------------------------------------------------------------------------


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def partial_path(out: Path) -> Path:
    """Where `OutputFolder` builds `out`."""
    return out.parent / f".{out.name}.partial"


def retired_path(out: Path) -> Path:
    """Where the previous `out` waits during a swap."""
    return out.parent / f".{out.name}.old"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, what: str, check: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the one-writer lock of `out` (a file or folder) for the duration of the block.

    `check` (which raises to refuse `out`) runs first, before the lock file or a missing parent folder
    is made, so a refused command leaves nothing beside the user's file; and again under the lock,
    where no other writer can change the answer. A lock file this call made is removed again when the
    block fails (a refusal found later, by a caller without `check`), while still held: a writer that
    opened it meanwhile was refused, and the next one makes a new file.
    """
    out = Path(out)
    if check is not None:
        check()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        made = not lock_path(out).exists()
        f = open(lock_path(out), "a+")
    except OSError as e:
        raise disk_error(e, str(out)) or e from None
    held = False
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise OutputError(f"{out}: in use by another {what} (pid {holder}); wait for it to finish or "
                              "choose another output") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        if check is not None:
            check()
        yield
    except BaseException:
        if made and held:
            remove(lock_path(out))
        raise
    finally:
        f.close()  # closing releases the lock


# -- single files ----------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends cleanly it replaces `path`.

    On an error the temporary is removed and `path` is untouched; a failed write becomes `OutputError`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        remove(tmp)
        raise disk_error(e, what or str(path)) or OutputError(f"{path}: cannot write it ({e.strerror or e})") from None
    except BaseException:
        remove(tmp)
        raise


def json_safe(obj: object) -> object:
    """`obj` with every non-finite float as None: strict JSON, which any reader can parse (no bare NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: object, default: Callable | None = None) -> None:
    """Strict JSON (`json_safe`) through a temporary file, fsync and rename: readers see the old file or the
    new one. `default` converts objects json cannot (as in `json.dump`)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(json_safe(obj), f, ensure_ascii=False, indent=2, sort_keys=True, allow_nan=False, default=default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def check_replaceable_file(path: str | os.PathLike, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse (one line, nothing touched) to write a file over anything but an earlier one of ours."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give the path of the {what} file to write")
    if path.exists() and not is_ours(path):
        raise OutputError(f"{path}: exists and is not a {what} written by this project; choose another path "
                          "(nothing was changed)")


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """`is_ours` for JSON outputs: the file is a JSON object (or a list of them) holding all of `keys`."""

    def is_ours(path: Path) -> bool:
        try:
            obj = read_json(path)
        except (OSError, ValueError):
            return False
        items = obj if isinstance(obj, list) else [obj]
        return bool(items) and all(isinstance(i, dict) and all(k in i for k in keys) for i in items)

    return is_ours


def check_free_space(path: str | os.PathLike, n_bytes: int, what: str) -> None:
    """Refuse up front when the disk holding `path` has less than `n_bytes` free."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < n_bytes:
        raise OutputError(f"{path}: {what} needs about {_size(n_bytes)} but the disk has {_size(free)} free; "
                          "free some space or choose another folder")


def _size(n: int) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB"


# -- folders ---------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), list)
    return manifest if ok else None


def folder_files(folder: Path) -> set[str]:
    """Every file below `folder`, as relative posix paths (folders themselves are not listed)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


class OutputFolder:
    """Build a folder beside `out` and swap it in. Use as a context manager, write into `path(name)`,
    then `commit()`; leaving the block without `commit()` (an error, Ctrl-C) removes the partial folder.

    `kind` types the folder (e.g. ``tokens/pretrain``, ``checkpoint``, ``hf-export``): an existing `out`
    is replaced only if it is of the same kind and holds only its own files. `legacy_files(out)` may
    return the files of a folder of this kind written before manifests existed (None if it is not one).
    With `lock`, the folder's one-writer lock is held from the check to the swap.
    """

    def __init__(self, out: str | os.PathLike, kind: str, what: str,
                 legacy_files: Callable[[Path], set[str] | None] | None = None, lock: bool = True):
        self.out, self.kind, self.what = Path(out), kind, what
        self.legacy_files = legacy_files
        self.partial, self.retired = partial_path(self.out), retired_path(self.out)
        self._lock = output_lock(self.out, what, self._check_before_lock) if lock else contextlib.nullcontext()
        self.committed = False

    def __enter__(self) -> OutputFolder:
        self._lock.__enter__()
        try:
            self.restore_interrupted_swap()
            self.check_replaceable()
            remove(self.partial)  # left by a killed run
            self.partial.mkdir(parents=True)
        except BaseException as e:
            self._lock.__exit__(type(e), e, e.__traceback__)
            if isinstance(e, OSError):
                raise disk_error(e, str(self.out)) or e from None
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self.committed:
                remove(self.partial)
        finally:
            self._lock.__exit__(exc_type, exc, tb)
        if isinstance(exc, OSError) and (error := disk_error(exc, f"{self.what} {self.out}")):
            raise error from None

    def path(self, name: str) -> Path:
        """Where to write file `name` (may contain '/') inside the folder being built."""
        return self.partial / name

    def _check_before_lock(self) -> None:
        """Refuse before anything is made (see `output_lock`); under the lock `__enter__` checks again."""
        if not (self.retired.exists() and not self.out.exists()):  # (else a killed swap is put back first)
            self.check_replaceable()

    def restore_interrupted_swap(self) -> None:
        """Killed between the two renames of a swap: the previous folder waits in `.NAME.old`."""
        if self.retired.exists() and not self.out.exists():
            self.retired.rename(self.out)
        remove(self.retired)

    def check_replaceable(self) -> None:
        """Refuse (one line, nothing touched) unless `out` is absent, empty, or our own folder of this kind."""
        out = self.out
        if not out.exists():
            return
        if not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; choose another output")
        present = folder_files(out) | {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir()}
        if not present:
            return
        manifest = read_manifest(out)
        if manifest is not None and manifest.get("kind") != self.kind:
            raise OutputError(f"{out}: holds a {manifest.get('kind')} folder, not a {self.kind} one; "
                              "choose another output (nothing was changed)")
        ours = set(manifest["files"]) | {MANIFEST} if manifest else (
            self.legacy_files(out) if self.legacy_files else None)
        if ours is None:
            raise OutputError(f"{out}: exists and is not a {self.what} made by this project; choose an empty "
                              "or new folder (nothing was changed)")
        foreign = sorted(f for f in folder_files(out) if f not in ours)
        if foreign:
            raise OutputError(f"{out}: also holds files this project did not write ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); move them or choose another folder "
                              "(nothing was changed)")

    def commit(self) -> Path:
        """Write the manifest, then swap the finished folder into place. Returns `out`."""
        files = sorted(folder_files(self.partial))
        manifest = {"made_by": "zh-mini-llm", "kind": self.kind, "files": files}
        write_json_atomic(self.partial / MANIFEST, manifest)
        fsync_dir(self.partial)
        if self.out.exists():
            self.out.rename(self.retired)
        self.partial.rename(self.out)
        fsync_dir(self.out.parent)
        remove(self.retired)
        self.committed = True
        return self.out
