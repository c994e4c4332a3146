"""``train all``'s report: the model card's facts (`model.export.card`) for the terminal and OUT/report.md."""

from __future__ import annotations

from pathlib import Path

from common.outputs import atomic_file
from model.export.card import evaluation_lines, lineage_facts, stage_lines
from train.pipeline_ledger import AllSpec, Ledger

REPORT = "report.md"


def report_text(spec: AllSpec, ledger: Ledger, runs: list[Path]) -> str:
    final = runs[-1]
    lines = [f"# make all: {spec.out}", "",
             f"Recipe `{spec.recipe}` (common/recipes.py), preset `{spec.preset}`. Data: wiki `{spec.wiki}`, "
             f"dialogs `{spec.belle}`, preference pairs `{spec.pref or 'none'}`.", "",
             "## Stages", "", *stage_lines(lineage_facts(final)), "", "## Evaluations", ""]
    for run in runs:
        lines += [f"{run.name}:"] + evaluation_lines(run)
    lines += ["", "## Skipped", ""] + ([f"- {note}" for note in spec.notes] or ["- nothing"])
    hf, gguf = spec.out / "hf", spec.out / "model-f16.gguf"
    lines += ["", "## Files", "",
              f"- runs: {', '.join(str(r) for r in runs)}; the model: {final}",
              f"- Hugging Face export with its model card: {hf} ({hf / 'README.md'})",
              f"- GGUF for llama.cpp / Ollama: {gguf}",
              f"- the ledger a rerun resumes from: {ledger.path}", "",
              "Next: `make chat CKPT=" + str(final) + "`, `make serve CKPT=" + str(final) + "`, "
              "`make ollama CKPT=" + str(final) + "`."]
    return "\n".join(lines) + "\n"


def write_report(spec: AllSpec, ledger: Ledger, runs: list[Path]) -> Path:
    text = report_text(spec, ledger, runs)
    path = spec.out / REPORT
    with atomic_file(path) as tmp:
        tmp.write_text(text, "utf-8")
    print(text)
    return path
