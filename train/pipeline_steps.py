"""The steps of ``train all`` (`train.pipeline_all`), each a function of (spec, ledger, state), in `STEPS` order.

A step names its settings (what its result depends on), asks the ledger whether it finished with exactly
these, and otherwise runs and records its result. `state` carries what later steps need (folders, runs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.outputs import write_json_atomic
from common.recipes import vocab_size as recipe_vocab_size
from model.io import INFO_NAME, resolve_model_dir
from prep.recipe_vocab import recipe_tokenizer, recipe_vocab_folder
from prep.tokenizer import CUT_VOCAB_FILE, DEFAULT_TOKENIZER
from train.overrides import apply_overrides
from train.pipeline_ledger import AllError, AllSpec, Ledger, folder_digest, hub_reachable, input_fingerprint
from train.presets import preset
from train.stages import STAGES


def _check_unchanged(ledger: Ledger, folder: Path, result: dict, name: str, digest_of: str = "meta.json") -> None:
    """A skipped step's output must still be what it recorded (not deleted or replaced since)."""
    if not (folder / digest_of).is_file() or folder_digest(folder, digest_of) != result.get("digest"):
        raise AllError(f"{folder}: changed or removed since step {name} finished; restore it, or remove the step's "
                       f"entry from {ledger.path} to redo it")


def _tokenizer_setting(spec: AllSpec, out: Path) -> str:
    """What a dialog or pair prep tokenizes with: Qwen2, or the run's cut vocabulary (by content)."""
    if recipe_vocab_size(spec.recipe) is None:
        return DEFAULT_TOKENIZER
    vocab = recipe_vocab_folder(out)
    return folder_digest(vocab, CUT_VOCAB_FILE) if (vocab / CUT_VOCAB_FILE).is_file() else "none yet"


def _prep(spec: AllSpec, ledger: Ledger, state: dict, name: str, source: str, run, extra: dict | None = None) -> None:
    """One prep step: `run(out, tokenizer)` tokenizes `source` into OUT/data/<name>."""
    out = spec.out / "data" / name
    state[name] = out
    settings = {"input": input_fingerprint(source), "recipe": spec.recipe, "val_fraction": spec.val_fraction,
                "tokenizer": _tokenizer_setting(spec, out) if name != "wiki" else spec.vocab_size, **(extra or {})}
    done = ledger.begin(f"prep-{name}", settings)
    if done is not None:
        _check_unchanged(ledger, out, done, f"prep-{name}")
        return
    cut = (lambda folder: run(folder, DEFAULT_TOKENIZER)) if name == "wiki" else None
    size = spec.vocab_size if name == "wiki" else None
    meta = run(out, recipe_tokenizer(spec.recipe, DEFAULT_TOKENIZER, out, size, cut_from=cut))
    tokens = {split: s["tokens"] for split, s in meta["splits"].items()}
    ledger.finish(f"prep-{name}", {"tokens": tokens, "digest": folder_digest(out)})


def prep_wiki(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    from prep.wiki import run_wiki

    _prep(spec, ledger, state, "wiki", spec.wiki,
          lambda out, tok: run_wiki(spec.wiki, out, tokenizer=tok, val_fraction=spec.val_fraction))


def prep_sft(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    from prep.sft import run_sft

    _prep(spec, ledger, state, "sft", spec.belle,
          lambda out, tok: run_sft(spec.belle, out, tokenizer=tok, val_fraction=spec.val_fraction))


def prep_pref(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    if not spec.pref:
        spec.notes.append("preference pairs and DPO: skipped (no --pref / PREF= given)")
        return
    from prep.pref import run_pref

    max_len = stage_config(spec, "dpo").model.block_size + 1  # a pair's dialog fits one training block
    _prep(spec, ledger, state, "pref", spec.pref, lambda out, tok: run_pref(
        spec.pref, out, tokenizer=tok, max_len=max_len, val_fraction=spec.val_fraction), {"max_len": max_len})


def stage_config(spec: AllSpec, stage: str):
    """The stage's config: size preset -> stage overlay -> recipe -> --steps and --set (``KEY=VALUE`` for every
    stage, ``STAGE.KEY=VALUE`` for one: ``pretrain.max_steps=800``)."""
    items = [f"max_steps={spec.steps}"] if spec.steps else []
    for item in spec.assignments:
        prefix, dot, rest = item.partition(".")
        if dot and prefix in STAGES and "=" not in prefix:  # the stage registry names them
            items += [rest] if prefix == stage else []
        else:
            items.append(item)
    try:
        return apply_overrides(preset(spec.preset, stage, spec.recipe), items)
    except ValueError as e:
        raise AllError(f"{stage}: {e}") from None


def _train(spec: AllSpec, ledger: Ledger, state: dict, stage: str, data: Path, init: Path | None) -> None:
    from train.run import RunSpec
    from train.trainer import train

    cfg, out = stage_config(spec, stage), spec.out / stage
    settings = {"data": folder_digest(data), "config": cfg.to_dict(),
                "init": folder_digest(resolve_model_dir(init), INFO_NAME) if init else None}
    done = ledger.begin(stage, settings)
    if done is None:
        result = train(cfg, RunSpec(stage, str(data), out, init))
        if result.signal is not None:  # stopped by a signal after saving: the next run resumes it
            raise SystemExit(128 + result.signal)
        done = ledger.finish(stage, {"step": result.step, "val_loss": result.val_loss, "val_bpb": result.val_bpb,
                                     "wall_s": round(result.wall_s, 1),
                                     "digest": folder_digest(resolve_model_dir(out), INFO_NAME)})
    else:
        _check_unchanged(ledger, out / "checkpoint", done, stage, INFO_NAME)
    state.setdefault("runs", []).append(out)


def pretrain(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    _train(spec, ledger, state, "pretrain", state["wiki"], None)


def sft(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    _train(spec, ledger, state, "sft", state["sft"], state["runs"][-1])


def dpo(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    if "pref" in state:
        _train(spec, ledger, state, "dpo", state["pref"], state["runs"][-1])


def heldout_bpb(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    """Bits per byte on held-out raw text, for the pretrained model and the final one (`make bpb`)."""
    if not spec.heldout:
        spec.notes.append("bits per byte on held-out text: skipped (no --heldout / HELDOUT= text given)")
        return
    from model.export.card import HELDOUT_NAME
    from model.measure.bpb import bits_per_byte, load_scored_model

    for run in dict.fromkeys([state["runs"][0], state["runs"][-1]]):
        settings = {"text": input_fingerprint(spec.heldout), "model": folder_digest(resolve_model_dir(run), INFO_NAME)}
        if ledger.begin(f"bpb-{run.name}", settings) is None:
            summary = bits_per_byte(load_scored_model(run), spec.heldout)
            record = {"text": spec.heldout, "bpb": summary["bits_per_byte"], "bytes": summary["bytes"],
                      "documents": summary["documents"]}
            write_json_atomic(run / HELDOUT_NAME, record)
            ledger.finish(f"bpb-{run.name}", record)


def harness(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    """C-Eval / CMMLU through lm-eval, only where the hub answers (its tasks' data lives there)."""
    why_not = hub_reachable()
    if why_not:
        spec.notes.append(f"harness ({spec.harness_tasks}): skipped, {why_not}; run `make harness` where the hub answers")
        return
    final = state["runs"][-1]
    settings = {"model": folder_digest(resolve_model_dir(final), INFO_NAME), "tasks": spec.harness_tasks,
                "limit": spec.harness_limit}
    if ledger.begin("harness", settings) is None:
        limit = ["--limit", str(spec.harness_limit)] if spec.harness_limit else []
        done = subprocess.run([sys.executable, "-m", "model", "harness", "--ckpt", str(final), "--tasks",
                               spec.harness_tasks, *limit])
        if done.returncode:
            raise AllError(f"the harness failed (exit {done.returncode}); rerun to retry it")
        ledger.finish("harness", {"tasks": spec.harness_tasks})


def export(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    """The Hugging Face folder (its README.md the model card) and the GGUF of the final model."""
    from model.export.gguf import export_gguf
    from model.export.hf import export_hf

    final = state["runs"][-1]
    digest = folder_digest(resolve_model_dir(final), INFO_NAME)
    evals = sorted(p.name for run in state["runs"] for p in run.glob("heldout_bpb.json"))
    if ledger.begin("export", {"model": digest, "evaluations": evals}) is None:
        ledger.finish("export", {"out": export_hf(final, spec.out / "hf")["out"]})
    if ledger.begin("gguf", {"model": digest}) is None:
        ledger.finish("gguf", {"out": export_gguf(final, spec.out / "model-f16.gguf")["out"]})


def report(spec: AllSpec, ledger: Ledger, state: dict) -> None:
    from train.pipeline_report import write_report

    write_report(spec, ledger, state["runs"])


STEPS = (prep_wiki, prep_sft, prep_pref, pretrain, sft, dpo, heldout_bpb, harness, export, report)
