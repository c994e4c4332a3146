"""``python -m train``: see `train.cli` (under ``make``, its ARGS are appended: `prep.cli_common.make_args`)."""

from prep.cli_common import main
from train.cli import cli

if __name__ == "__main__":
    main(cli, "python -m train")
