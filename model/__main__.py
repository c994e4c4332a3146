"""``python -m model``: see `model.cli`."""

from model.cli import cli

if __name__ == "__main__":
    cli(prog_name="python -m model")
