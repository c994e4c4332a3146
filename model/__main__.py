"""``python -m model``: see `model.cli` (under ``make``, its ARGS are appended: `common.cli.make_args`)."""

from common.cli import run_cli

if __name__ == "__main__":
    run_cli("model.cli", "python -m model")
