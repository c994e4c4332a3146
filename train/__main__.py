"""``python -m train``: see `train.cli` (under ``make``, its ARGS are appended: `prep.cli_common.make_args`)."""

import sys

if __name__ == "__main__":
    try:  # Ctrl-C while the imports below load torch is an interrupt too, not a traceback
        from prep.cli_common import main
        from train.cli import cli

        main(cli, "python -m train")
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)  # before the command began: nothing was written
        sys.exit(130)
