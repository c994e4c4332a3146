"""What the project's command lines share: library errors become one line, ``make``'s ARGS, and prep's
common options.

Library code raises its own exceptions (`PrepError`, `TokenFileError`, `CheckpointError`, ...); a CLI
command wrapped in `one_line_errors(...)` prints them as ``Error: <message>`` and exits 1 (130 for an
interrupted run, as shells expect), never with a traceback. A disk or permission failure (`OSError`)
is one line too: the file and the system's reason.
"""

from __future__ import annotations

import functools
import importlib
import os
import shlex
import sys
from collections.abc import Callable

import click

from prep.outputs import OutputError
from prep.records import PrepError, PrepInterrupted
from prep.tokenfile import TokenFileError
from prep.tokenizer import DEFAULT_TOKENIZER, TokenizerError

PREP_ERRORS = (PrepError, TokenFileError, TokenizerError, OutputError)  # what prep commands print as one line


class CommandError(click.ClickException):
    """A one-line error with an exit code of our choosing."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def os_error_line(e: OSError) -> str:
    """``path: reason`` for a failed file operation (no errno numbers, no traceback)."""
    where = e.filename if e.filename is not None else ""
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where else reason


def one_line_errors(*error_types: type[BaseException]) -> Callable:
    """Decorate a click command so that `error_types`, `OSError` and interrupts end it with one line (an
    interrupt exits 130, or 128 + the signal's number where the command says which)."""

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except PrepInterrupted as e:
                raise CommandError(str(e), e.exit_code) from None
            except KeyboardInterrupt:
                raise CommandError("interrupted", 130) from None
            except error_types as e:
                raise CommandError(str(e)) from None
            except OSError as e:
                raise CommandError(os_error_line(e)) from None

        return wrapper

    return decorate


MAKE_ARGS = "MK_ARGS"  # set by the Makefile's recipes to the ARGS the user gave `make`


def make_args() -> list[str]:
    """The ARGS of ``make TARGET ARGS="..."``, split as a shell would split them, quotes included, but with
    nothing expanded or run: ``ARGS='--system "你是助手" --seed 7'`` is four arguments, and a `backquote`
    or ``$HOME`` in them is plain text."""
    text = os.environ.get(MAKE_ARGS, "")
    try:
        return shlex.split(text)
    except ValueError as e:
        raise SystemExit(f"Error: ARGS={text!r}: {e} (unbalanced quotes?)") from None


def run_cli(module: str, prog_name: str) -> None:
    """``python -m PACKAGE``: import `module`'s command group (torch and all) and run it on the command
    line's arguments plus `make_args()`. Ctrl-C before a command has begun (say, while torch loads) is
    one line and exit 130 too, not a traceback."""
    try:
        group = importlib.import_module(module).cli
        group(args=sys.argv[1:] + make_args(), prog_name=prog_name)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)


def prep_options(f: Callable) -> Callable:
    """--tokenizer, --val-fraction and --workers: the options every prep command shares."""
    f = click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes (default: every core). 1 runs in-process; the output is the same.")(f)
    f = click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.005,
                     show_default=True, help="Share of documents in the val split, chosen by a stable hash of "
                     "each document's id, so a document never changes split between runs.")(f)
    f = click.option("--tokenizer", default=DEFAULT_TOKENIZER, show_default=True,
                     help="qwen2 (offline Qwen2 tokenizer), bytes (tests), or a Hugging Face name or folder.")(f)
    return f
