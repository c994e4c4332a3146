"""What the commands that run a model share: ``--device`` and ``--dtype`` (the names of `model.runtime`,
for ``python -m model`` and ``python -m train`` alike), the errors they print as one line, the console
their notes go to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console

from common.cli import UserPath
from model.io import CheckpointError
from model.runtime import DEVICE_NAMES, DTYPES, dtype_name

console = Console(stderr=True, highlight=False, soft_wrap=True)  # notes and summaries; stdout is for text


def with_hint(e: CheckpointError, ckpt: Path) -> CheckpointError:
    """For a folder that does not exist, say how to make one."""
    hint = "; train one first (make pretrain, make sft) or pass --ckpt" if not ckpt.exists() else ""
    return CheckpointError(f"{e}{hint}")


class DtypeChoice(click.Choice):
    """auto, fp32, bf16, fp16; the long names (float32, bfloat16, float16) are read as the same."""

    def __init__(self) -> None:
        super().__init__(DTYPES)

    def convert(self, value, param, ctx):
        try:
            value = dtype_name(value)
        except ValueError:
            pass  # the Choice says what is allowed
        return super().convert(value, param, ctx)


DTYPE_HELP = "auto: bf16 autocast on GPUs that have it (fp16 on older ones), fp32 on CPUs"


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True, help=DEVICE_NAMES)(f)


def dtype_option(default: str = "auto", help: str = DTYPE_HELP) -> Callable:
    return click.option("--dtype", type=DtypeChoice(), default=default, show_default=True, help=help)


def scoring_options(batch_default: int, batch_max: int, batch_help: str, out_help: str) -> Callable:
    """``--batch-size``, ``--device``, ``--dtype`` and ``--out``: what every command that scores a model on text
    takes (`model.measure.cli.bpb`, `train eval`)."""
    def apply(f: Callable) -> Callable:
        f = click.option("--out", type=UserPath(), default=None, help=out_help)(f)
        f = device_option(dtype_option()(f))
        return click.option("--batch-size", type=click.IntRange(1, batch_max), default=batch_default,
                            show_default=True, help=batch_help)(f)
    return apply
