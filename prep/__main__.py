"""``python -m prep …``: the offline prep commands (see ``python -m prep --help``)."""

from prep.cli import cli

if __name__ == "__main__":
    cli()
