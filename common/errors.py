"""The two kinds of failure a command ends with one line: a user's mistake, and an interruption.

Every package's own errors for something a user can cause or fix (a bad file, a wrong option, a full
disk) subclass `UserError`; `common.cli.one_line_errors` prints any of them as ``Error: <message>``,
so no command keeps a list of error types. Errors that are bugs stay ordinary exceptions and keep
their tracebacks.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the CLI prints the message alone and exits 1."""


class Interrupted(UserError):
    """Ctrl-C, SIGTERM or SIGHUP ended the command after it cleaned up: exit 128 + the signal's number
    (130, 143, 129), as shells expect."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignal(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) turned into an interrupt, remembering which signal it was: every
    ``finally`` and ``except KeyboardInterrupt`` that cleans up after Ctrl-C runs for it too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
