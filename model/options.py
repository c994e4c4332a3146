"""The command-line options of every command that runs a model: ``--device`` and ``--dtype``.

Used by ``python -m model`` and ``python -m train`` alike, so both take the names of `model.runtime`.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from model.runtime import DEVICE_NAMES, DTYPES, dtype_name


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
