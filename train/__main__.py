"""``python -m train``: see `train.cli` (under ``make``, its ARGS are appended: `common.cli.make_args`)."""

from common.cli import run_cli

if __name__ == "__main__":
    run_cli("train.cli", "python -m train")
