"""The Makefile's stage targets, written from the registry: ``python -m train.stages.makefile > stages.mk``.

The Makefile includes ``stages.mk``; a test keeps the file equal to what this prints, so a stage added to
`train.stages` (with a ``make_data``) gets its ``make NAME`` target by rerunning this, never by hand.
Each target passes its variables byte for byte (the Makefile's ``verbatim`` and ``MK_*`` pattern).
"""

from __future__ import annotations

from train.stage import LMStage
from train.stages import STAGES

HEADER = ("# The stages' targets, generated from the stage registry (train/stages/): do not edit; run\n"
          "#   .venv/bin/python -m train.stages.makefile > stages.mk\n")


def target(stage: LMStage) -> str:
    """One stage's target: DATA, INIT (if it starts from a model) and OUT, the preset, NPROC and ARGS."""
    name = stage.name
    defaults = {"DATA": stage.make_data, **({"INIT": stage.make_init} if stage.needs_init else {}),
                "OUT": f"runs/{name}"}
    lines = [f"{name}: {var} ?= {value}" for var, value in defaults.items()]
    lines += [f"{name}: export MK_{var} = $(call verbatim,{var})" for var in (*defaults, "PRESET")]
    usage = " ".join(f"[{var}={value}]" for var, value in defaults.items())
    lines.append(f"{name}: $(STAMP) ## {stage.make_summary or name}: [PRESET=mini] [RECIPE=seed|modern] {usage} "
                 "[NPROC=N] [ARGS=...]")
    flags = " ".join(f'--{var.lower()} "$$MK_{var}"' for var in ("PRESET", *defaults))
    lines += ["\t@$(CHECK_NPROC)", f"\t$(LAUNCH) -m train {name} {flags} $(RECIPE_ARG)"]  # the Makefile's RECIPE
    return "\n".join(lines) + "\n"


def render() -> str:
    return HEADER + "".join("\n" + target(stage) for stage in STAGES.values() if stage.make_data)


if __name__ == "__main__":
    print(render(), end="")
