"""``python -m prep``: see `prep.cli` (under ``make``, its ARGS are appended: `common.cli.make_args`)."""

from common.cli import run_cli

if __name__ == "__main__":
    run_cli("prep.cli", "python -m prep")
