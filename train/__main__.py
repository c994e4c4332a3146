"""``python -m train``: see `train.cli`."""

from train.cli import cli

if __name__ == "__main__":
    cli(prog_name="python -m train")
