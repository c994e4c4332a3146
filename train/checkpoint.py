"""The run folder's ``checkpoint/``: everything needed to continue a run exactly, written atomically.

    OUT/checkpoint/
      model.safetensors   weights (fp32), read by sampling, chat, export and `--init`
      adapter.safetensors instead, in a LoRA run: the adapters only; model.json names the base (model.adapters)
      model.json          model config, tokenizer identity (from the data's meta.json), data kind, step
      trainer.pt          optimizer + grad-scaler state and step (loaded with weights_only=True)
      train_config.json   the full TrainConfig and how the run was started (stage, data, init and its identity)

The sampler and the dropout RNG are pure functions of (seed, step, rank), so the step *is* their
state. A checkpoint is built beside the old one and swapped in (`common.outputs.OutputFolder`, kind
``checkpoint``), so a crash at any moment leaves the previous checkpoint or the new one, never a mix,
and a full disk leaves the previous one intact.

A run folder is typed by its checkpoint: `check_resumable` refuses to continue a checkpoint of the
other stage, or of another tokenizer or model shape, so a typo in ``--out`` never overwrites another
run's work. Everything loaded from a checkpoint is checked against the model before use.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.outputs import JSONFileError, OutputFolder, read_json, write_json_atomic
from model.adapters import save_adapter
from model.archs import config_from_dict
from model.identity import checkpoint_identity
from model.io import INFO_NAME, WEIGHTS_NAME, CheckpointError, RunFolder, save_model
from model.lm import CausalLM
from model.tokenizer_files import write_tokenizer_files
from prep.tokenizer import TokenizerError, check_identity

TRAINER_STATE = "trainer.pt"
TRAIN_CONFIG = "train_config.json"
CHECKPOINT_FILES = {WEIGHTS_NAME, INFO_NAME, TRAINER_STATE, TRAIN_CONFIG}
BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two fp32 moments: what a checkpoint holds per parameter
CHECKPOINT_SLACK = 64 << 10  # model.json, train_config.json, file headers


def _legacy_checkpoint_files(folder: Path) -> set[str] | None:
    """A checkpoint written before folders had a manifest: it has a model.json."""
    return CHECKPOINT_FILES if (folder / INFO_NAME).is_file() else None


def checkpoint_folder(run: RunFolder) -> OutputFolder:
    """The swap-in builder of ``run/checkpoint`` (the run itself holds the folder's lock)."""
    return OutputFolder(run.checkpoint, "checkpoint", "checkpoint", _legacy_checkpoint_files, lock=False)


def find_checkpoint(run: RunFolder) -> Path | None:
    """The run's finished checkpoint folder, or None for a fresh run (repairs an interrupted swap)."""
    checkpoint_folder(run).restore_interrupted_swap()
    return run.checkpoint if (run.checkpoint / INFO_NAME).is_file() else None


def checkpoint_bytes(model: CausalLM) -> int:
    """About what one checkpoint of `model` takes on disk (checked free before training starts): its trained
    parameters (all of them, or a LoRA run's adapters; the frozen base is not copied)."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(BYTES_PER_PARAM * trained * 1.02) + CHECKPOINT_SLACK


def save_checkpoint(run: RunFolder, model: CausalLM, optimizer, scaler, step: int,
                    tokenizer: dict, data_kind: str, chat: bool, run_info: dict,
                    tokenizer_files: dict[str, bytes] | None = None, adapter: dict | None = None) -> Path:
    """Write the checkpoint for `step` (rank 0 only) and swap it in atomically, with its tokenizer's files
    where it has any (`model.tokenizer_files`); a LoRA run's (`adapter`: its options and base identity,
    `model.adapters`) holds the adapters instead of the weights."""
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    with checkpoint_folder(run) as folder:
        if adapter is None:
            save_model(folder.partial, model, tokenizer, data_kind, step, chat)
        else:
            save_adapter(folder.partial, model, adapter, tokenizer, data_kind, step, chat)
        write_tokenizer_files(tokenizer_files, folder.partial)
        _save_torch(state, folder.path(TRAINER_STATE))
        write_json_atomic(folder.path(TRAIN_CONFIG), run_info)
        return folder.commit()


def _save_torch(state: dict, path: Path) -> None:
    """torch.save that reports a full disk as the OSError it is (torch wraps it in a RuntimeError), so
    the checkpoint builder can turn it into one line and keep the previous checkpoint."""
    try:
        with open(path, "wb") as f:
            torch.save(state, f)
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def load_trainer_state(ckpt: Path) -> dict:
    """Optimizer/scaler state and step, without unpickling arbitrary objects."""
    path = ckpt / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "optimizer" not in state:
        raise CheckpointError(f"{path}: not a trainer state (expected step and optimizer)")
    return state


def check_optimizer_state(state: dict, optimizer, info_step: int, where: Path) -> None:
    """Refuse optimizer state that does not belong to this run's `train.optim.Optimizer` and model (e.g. a
    trainer.pt copied from another run), or to another step than the weights'."""
    if state["step"] != info_step:
        raise CheckpointError(f"{where}: trainer.pt is at step {state['step']} but model.json at step {info_step}; "
                              "the checkpoint mixes two runs")
    optimizer.check_state(state["optimizer"], where)


def read_run_info(ckpt: Path) -> dict:
    """``train_config.json``: how the run was started (stage, data, init) and its whole config."""
    path = ckpt / TRAIN_CONFIG
    try:
        info = read_json(path)
    except JSONFileError as e:
        raise CheckpointError(f"{e}; the checkpoint is incomplete or damaged") from None
    if not isinstance(info, dict) or not isinstance(info.get("config", {}), dict):
        raise CheckpointError(f"{path}: expected an object with a 'config' object; the checkpoint is damaged")
    return info


def check_resumable(ckpt: Path, info: dict, stage: str, identity: dict, shape: dict) -> dict:
    """The checkpoint's train_config.json, once its model (`info`, its model.json) is known to be this
    stage's, tokenizer's and shape's."""
    run_info = read_run_info(ckpt)
    run_stage = run_info.get("stage", info["data_kind"])
    if run_stage != stage:
        raise CheckpointError(f"{ckpt}: holds a {run_stage} run; `train {stage}` would overwrite it. Use another "
                              f"--out for {stage} (nothing was changed)")
    try:
        check_identity(info["tokenizer"], identity, str(ckpt), "the data's tokenizer")
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    check_shape(info["config"], shape, str(ckpt / INFO_NAME))
    return run_info


def parent_record(saved_run: dict | None, init: Path | None, given: Path | None, main: bool = True) -> dict:
    """What train_config.json records of the run this one started from: --init's folder and its identity
    (`model.identity`: the path as given, step, weights digest, tokenizer), taken when the run begins so
    that a report can tell the true parent from a run that later took its place. A resumed run
    (`saved_run`, its train_config.json) keeps its record; only rank 0 (`main`) reads the weights."""
    if saved_run is not None:
        return {key: saved_run.get(key) for key in ("init", "init_identity")}
    if init is None:
        return {"init": None, "init_identity": None}
    return {"init": str(init), "init_identity": checkpoint_identity(given or init) if main else None}


def check_shape(model_config: dict, wanted: dict, where: str) -> None:
    """Refuse a checkpoint whose model (architecture, shape, vocabulary) differs from the one this run asks for."""
    try:
        recorded = config_from_dict(model_config).to_dict()  # a model.json without arch is gpt2
    except ValueError as e:
        raise CheckpointError(f"{where}: bad model config ({e})") from None
    diffs = [f"{k}={recorded.get(k)} (run wants {v})" for k, v in wanted.items() if recorded.get(k) != v]
    if diffs:
        raise CheckpointError(f"{where}: checkpoint model has {', '.join(diffs)}")
