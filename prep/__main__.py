"""``python -m prep``: see `prep.cli` (under ``make``, its ARGS are appended: `prep.cli_common.make_args`)."""

from prep.cli import cli
from prep.cli_common import main

if __name__ == "__main__":
    main(cli, "python -m prep")
