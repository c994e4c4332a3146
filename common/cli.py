"""What the project's command lines share: errors a user can cause become one line, and ``make``'s ARGS.

Library code raises its own exceptions, each a `common.errors.UserError`; a CLI command wrapped in
`one_line_errors` prints them as ``Error: <message>`` and exits 1 (128 + the signal for an interrupted
run, as shells expect), never with a traceback. `run_cli` turns SIGTERM and SIGHUP into the same
interrupt as Ctrl-C for every command, so every command's clean-up runs for them. A disk or permission failure (`OSError`) is one line
too: the file and the system's reason.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from common.errors import Interrupted, UserError
from common.paths import expand_user
from common.signals import stop_signals_interrupt


class CommandError(click.ClickException):
    """A one-line error with an exit code of our choosing."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class FiniteFloat(click.FloatRange):
    """A number option that must be finite and in its range. click's own `FloatRange` lets NaN through
    (every comparison with it is false) and infinity where a bound is open; both are refused here."""

    name = "number"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class UserPath(click.Path):
    """A path option or argument (a `pathlib.Path`) with ``~`` expanded (`expand_user`)."""

    def __init__(self, **kw):
        super().__init__(path_type=Path, **kw)

    def convert(self, value, param, ctx):
        return super().convert(expand_user(value) if isinstance(value, str) else value, param, ctx)


def os_error_line(e: OSError) -> str:
    """``path: reason`` for a failed file operation (no errno numbers, no traceback)."""
    where = e.filename if e.filename is not None else ""
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where else reason


def one_line_errors(command: Callable) -> Callable:
    """Decorate a click command so that a `UserError`, an `OSError` and an interrupt end it with one line
    (an interrupt exits 130, or 128 + the signal's number where the command says which)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Interrupted as e:
            raise CommandError(str(e), e.exit_code) from None
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP as a `StopSignal`
            raise CommandError("interrupted", 128 + getattr(e, "signum", signal.SIGINT)) from None
        except UserError as e:
            raise CommandError(str(e)) from None
        except OSError as e:
            raise CommandError(os_error_line(e)) from None

    return wrapper


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
    line's arguments plus `make_args()`, with SIGTERM and SIGHUP handled as Ctrl-C is. An interrupt
    before a command has begun (say, while torch loads) is one line and exit 128 + the signal too."""
    try:
        with stop_signals_interrupt():
            group = importlib.import_module(module).cli
            group(args=sys.argv[1:] + make_args(), prog_name=prog_name)
    except KeyboardInterrupt as e:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))
