"""The training run shared by every stage (pretraining, SFT, ...: `train.stage`).

`train(cfg, spec)` joins the process group (under torchrun), takes the run folder's lock and hands
over to a `Trainer`, whose life is: ``setup`` (check the data, any checkpoint in OUT and the --init
model against each other, build the model, the step and the data), then ``run``: steps
(`train.step.Stepper`) with ``evaluate`` and ``save`` at their intervals, until `max_steps`,
``--stop-at`` or a stop signal. A non-finite loss or gradient norm stops the run before the weights
change, so the last checkpoint is always a good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from common.errors import UserError
from common.outputs import check_free_space, output_lock
from model.archs import build
from model.io import CheckpointError, RunFolder, read_model_info, resolve_model_dir
from model.runtime import precision
from model.tokenizer_files import run_tokenizer, tokenizer_files
from prep.tokenizer import TokenizerError, check_identity, pad_vocab_size
from train import dist, lora
from train.checkpoint import (
    check_optimizer_state,
    check_resumable,
    check_shape,
    checkpoint_bytes,
    find_checkpoint,
    load_trainer_state,
    parent_record,
    save_checkpoint,
)
from train.config import TrainConfig
from train.data import StepLoader
from train.distill import with_distillation
from train.evaluate import sample_text, val_record
from train.inherit import config_changes, inherit_model, shape_of
from train.metrics import LiveView, MetricsLog, source_figures
from train.mixture import data_line, mixture_changes, open_mixture
from train.optim import lr_at
from train.perf import PeakMeter
from train.plan import check_block, check_step_fits, cuda_memory_check, resolve_micro_batch
from train.run import RunResult, RunSpec, StepAbandoned, StopFlag, print_summary, step_seed
from train.stages import PrepareContext, StageError
from train.stages import get as get_stage
from train.step import Stepper, StepStats
from train.tracking import check_available, open_trackers


class TrainError(UserError, ValueError):
    """A problem the user can fix (bad data for the stage, a mismatched model, a diverged run)."""


def train(cfg: TrainConfig, spec: RunSpec, console: Console | None = None) -> RunResult:
    """Run (or resume) one training run to `max_steps` (or `stop_at`, or a stop signal)."""
    d = dist.setup(cfg.device)
    lock = output_lock(spec.out, "training run") if d.is_main else contextlib.nullcontext()
    try:
        with lock:
            trainer = Trainer(cfg, spec, d, console or Console(stderr=True))
            return trainer.run()
    except (torch.OutOfMemoryError, RuntimeError) as e:  # RuntimeError: the CPU allocator's own
        if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
            raise
        raise TrainError(f"out of memory on {d.device} ({str(e).splitlines()[0][:160]}); `make plan` shows what a "
                         "step needs: lower micro_batch_size (or set it to auto) or loss_chunk_tokens") from None
    finally:
        dist.teardown()


class Trainer:
    """One training run: its data, model, step, metrics and checkpoints, and the loop over them."""

    def __init__(self, cfg: TrainConfig, spec: RunSpec, d: dist.Dist, console: Console):
        self.spec, self.d, self.console = spec, d, console
        self.run_folder = RunFolder(spec.out)
        try:
            self.main, self.stage = d.is_main, get_stage(spec.stage)
            cfg = cfg.for_stage(spec.stage)  # its settings are that stage's (a config of another is converted)
        except (StageError, ValueError) as e:
            raise TrainError(str(e)) from None
        self.stage = with_distillation(self.stage, getattr(cfg.stage, "kd_weight", 0.0))  # teacher targets (kd_weight)
        self.wall_start = time.perf_counter()
        self._open_data()
        self.precision = precision(d.device, cfg.dtype)  # resolved once: the plan, the step and the MFU meter
        self.cfg, self.ckpt, self.init = self._resolve_model(cfg)
        self.parent = parent_record(self.saved_run if self.ckpt else None, self.init, self.spec.init, self.main)
        self.stage = self.stage.for_config(self.cfg)  # e.g. a preference stage's loss and its weights
        self._build()
        self.last_loss, self.val_loss, self.val_bpb, self.val_step = math.nan, None, None, None
        self.val_sources = None
        self.saved_step, self.rates = self.step, []
        self.stop = StopFlag()  # replaced by the one `run` installs; evaluate() asks it

    # -- setup -------------------------------------------------------------------------------------

    def _open_data(self) -> None:
        """The token folder(s): the kind this stage trains on, each with something to learn."""
        spec = self.spec
        if spec.out.exists() and not spec.out.is_dir():
            raise TrainError(f"{spec.out}: exists and is not a folder; --out must be a run folder")
        check_available(spec.log)  # every rank, before anything starts
        self.mixture = open_mixture(spec.data)
        want = self.stage.data_kind
        if self.mixture.kind != want:
            raise TrainError(f"{spec.data}: a {self.mixture.kind!r} token folder, but `train {spec.stage}` needs a "
                             f"{want!r} one (from `{self.stage.prep_command}`)")
        self.data_kind = self.mixture.kind
        self.identity = {**self.mixture.tokenizer, "vocab_size": pad_vocab_size(self.mixture.tokenizer["len"])}
        self.train_splits = [source.split("train") for source in self.mixture.sources]
        self.val_splits = [source.split("val") for source in self.mixture.sources]
        self.data_record = self.mixture.record()  # folders, weights, token counts, meta.json sha256s
        for source, split in zip(self.mixture.sources, self.train_splits, strict=True):  # something to learn
            problem = (f"{source.path}: the train split has {split.n_tokens} tokens; nothing to train on"
                       if split.n_tokens < 2 else self.stage.check_trainable(source.path, split))
            if problem:
                raise TrainError(problem)

    def _resolve_model(self, cfg: TrainConfig) -> tuple[TrainConfig, Path | None, Path | None]:
        """Check OUT's checkpoint and --init against the data; ``(config, checkpoint, init folder)``.

        A run that continues a model (a resumed run, or a stage that starts from --init) keeps its function:
        every model field but the training knobs comes from that model, and one set on the command line
        to another value is an error, never a silent change (`train.inherit`).
        """
        ckpt = self._existing_checkpoint()
        init = None
        if ckpt is None and self.stage.needs_init:
            if self.spec.init is None:
                raise TrainError(f"train {self.stage.name} needs --init <run folder to start from> (e.g. runs/pretrain)")
            init = resolve_model_dir(self.spec.init)
        source = ckpt or init
        info = read_model_info(source) if source is not None else None  # its model.json
        if info is not None:
            where = f"{init} (--init)" if ckpt is None else f"{ckpt} (the run being resumed)"
            cfg = dataclasses.replace(cfg, model=inherit_model(cfg.model, info["config"], cfg.set_fields, where))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=self.identity["vocab_size"]))
        wanted = shape_of(cfg.model)
        self.saved_run = self.ckpt_step = None  # the checkpoint's train_config.json and step, when resuming
        if ckpt is not None:
            self.saved_run = check_resumable(ckpt, info, self.spec.stage, self.identity, wanted)
            self.ckpt_step = info["step"]
            self._check_same_data(ckpt)
        elif init is not None:
            try:
                check_identity(info["tokenizer"], self.identity, f"{init} (--init)", "the data's tokenizer")
            except TokenizerError as e:
                raise CheckpointError(str(e)) from None
            check_shape(info["config"], wanted, str(init / "model.json"))
        cfg, self.auto = resolve_micro_batch(cfg, self.d.world_size, self.d.device, self.identity["vocab_size"],
                                             self.precision.name, ckpt=ckpt)
        return self._fit_to_ranks(cfg), ckpt, init

    def _check_same_data(self, ckpt: Path) -> None:
        """Refuse to resume on another mixture than the checkpoint's, unless --allow-data-change."""
        changes, moves = mixture_changes(self.saved_run.get("mixture"), self.data_record)
        if changes and not self.spec.allow_data_change:
            raise TrainError(f"{ckpt}: the run was trained on other data: {'; '.join(changes)}. Resume with the same "
                             "--data, or add --allow-data-change to continue on the new data")
        if self.main and (changes or moves):
            notes = [*changes, *(f"moved {m}" for m in moves)]
            self.console.print(f"[yellow]data changed since the checkpoint{' (allowed)' if changes else ''}: "
                               f"{escape('; '.join(notes))}[/]")

    def _existing_checkpoint(self) -> Path | None:
        """OUT's checkpoint (rank 0 looks and repairs; every rank follows its answer), or None."""
        out = self.spec.out
        ckpt = find_checkpoint(self.run_folder) if self.main else None
        # a stage's own files (dpo's reference log-probs) come before the first metrics line
        started = self.run_folder.metrics.exists() or any((out / name).exists() for name in self.stage.run_files)
        if self.main and ckpt is None and out.is_dir() and any(out.iterdir()) and not started:
            raise TrainError(f"{out}: exists and is not a run folder (no checkpoint/ or metrics.jsonl); choose "
                             "another --out (nothing was changed)")
        if self.d.enabled:
            found = [ckpt is not None]
            torch.distributed.broadcast_object_list(found, src=0)
            ckpt = self.run_folder.checkpoint if found[0] else None
        return ckpt

    def _fit_to_ranks(self, cfg: TrainConfig) -> TrainConfig:
        try:
            cfg, note = cfg.fit_to_ranks(self.d.world_size)
        except ValueError as e:
            raise TrainError(str(e)) from None
        if note and self.main:
            self.console.print(f"[yellow]{note}[/]")
        return cfg

    def _build(self) -> None:
        """The model (fresh, from --init or from OUT's checkpoint), its step, the data and the metrics."""
        cfg, d = self.cfg, self.d
        self._check_model_fits()
        torch.manual_seed(cfg.seed)  # the same initial weights (and adapters) on every rank
        self.model = build(cfg.model)
        self.lora = lora.start_weights(self.model, cfg, self.ckpt, self.init, self.spec.init)  # train.lora
        self.model.to(d.device)
        self.stepper = Stepper(self.model, cfg, d, self.precision, self.stage)
        self.step = self._load_trainer_state() if self.ckpt is not None else 0
        prepared = self.stage.prepare(PrepareContext(
            self.model, d, cfg, self.train_splits, self.val_splits, self.mixture.weights, self.data_record,
            self.run_folder, self.console if self.main else None, self.saved_run, self.parent, self.stepper.autocast))
        self.val_starts = prepared.val_starts  # cfg.eval_blocks per folder
        self.loader = prepared.loader or StepLoader(prepared.sampler, d.rank, cfg.accumulation(d.world_size),
                                                    self.step, d.device, self.stage.count)
        self.peak = PeakMeter(d.device, self.precision.amp_dtype or torch.float32, d.world_size)
        self.tokenizer = self._sample_tokenizer() if self.main else None
        self.tokenizer_files = tokenizer_files(self.identity, self.ckpt, self.init) if self.main else None
        self.metrics = self._metrics_log() if self.main else None
        if self.main:
            check_free_space(self.spec.out, checkpoint_bytes(self.model), "a checkpoint")
            self._announce()

    def _check_model_fits(self) -> None:
        """Before anything is built: a block the data can fill, and a step (activations included) that fits."""
        check_block(self.cfg.model.block_size, self.train_splits, [s.path for s in self.mixture.sources])
        check_step_fits(self.cfg, self.precision.name, self.d.device, self.d.world_size)

    def _metrics_log(self) -> MetricsLog:
        resume_step = self.step if self.ckpt is not None else None
        config = {"stage": self.spec.stage, "data": str(self.spec.data), "config": self.cfg.to_dict(),
                  "mixture": self.data_record}
        return MetricsLog(self.run_folder, resume_step, open_trackers(self.spec.log, self.run_folder, config,
                                                                      resume_step))

    def _load_trainer_state(self) -> int:
        state = load_trainer_state(self.ckpt)
        check_optimizer_state(state, self.stepper.optimizer, self.ckpt_step, self.ckpt)
        self.stepper.load_state(state)
        return int(state["step"])

    def _sample_tokenizer(self):
        """The data's tokenizer for eval samples, or None (with a note) where it cannot be loaded here."""
        try:
            return run_tokenizer(self.identity, str(self.spec.data), self.ckpt or self.init)
        except (TokenizerError, CheckpointError, OSError) as e:
            self.console.print(f"[yellow]no eval samples: {e}")
            return None

    def _announce(self) -> None:
        cfg, d, m, prec = self.cfg, self.d, self.cfg.model, self.precision.name
        self.console.print(
            f"[bold]{self.spec.stage}[/] {self.model.num_params() / 1e6:.1f}M params ({m.n_layer}x{m.n_embd}, "
            f"vocab {m.vocab_size}) on {d.world_size} x {d.device} {prec}{' compiled' if self.stepper.compiled else ''}; "
            f"{cfg.batch_size} x {m.block_size} tokens/step = {cfg.micro_batch_size} x "
            f"{cfg.accumulation(d.world_size)} accumulation x {d.world_size} rank(s); train {escape(data_line(self.mixture, self.train_splits, self.val_starts))}; "
            f"MFU vs {self.peak.note}")
        for note in filter(None, (self.auto and self.auto.note, self.lora and self.lora.describe(self.model))):
            self.console.print(note)
        if self.ckpt is not None:
            self.console.print(f"resuming from {self.ckpt} at step {self.step}")
            if changes := config_changes(self.saved_run.get("config"), self.cfg):  # settings, the model's knobs
                self.console.print(f"[yellow]changed since the checkpoint: {', '.join(changes)}[/]")
        elif self.init is not None:
            self.console.print(f"starting from the weights of {self.init}")

    # -- evaluate, save, step ------------------------------------------------------------------------

    def evaluate(self) -> None:
        """Val loss and bits per byte on each folder's fixed blocks (all ranks), logged with a sample on rank 0.

        A mixture's val_loss / val_bpb are the weight-averaged per-folder figures (`train.mixture`)."""
        self.val_step = self.step
        if not any(len(starts) for starts in self.val_starts):
            return
        d, T, width = self.d, self.cfg.model.block_size, 2 + len(self.stage.val_metrics)
        sums: list[float] = []
        with self.stop.abandonable():  # (nothing is written before the sums are complete)
            for split, starts in zip(self.val_splits, self.val_starts, strict=True):
                sums += self.stage.eval_sums(self.model, split, starts, T, self.cfg.micro_batch_size, d.device,
                                             self.stepper.autocast, d.rank, d.world_size)
        sums = d.all_reduce_sum(torch.tensor(sums, dtype=torch.float64, device=d.device)).tolist()
        rows = [sums[i : i + width] for i in range(0, len(sums), width)]  # one per folder
        record = val_record(self.step, rows, self.val_splits, self.mixture, self.stage)
        if record is None:  # SFT blocks shorter than a user turn: nothing to score
            if self.main:
                self.live.print(f"step {self.step}: the {sum(map(len, self.val_starts))} eval blocks hold no target "
                                "tokens; raise block_size")
            return
        self.val_loss, self.val_bpb, self.val_sources = record["val_loss"], record["val_bpb"], record.get("sources")
        if self.main:
            self.metrics.write(record)
            self.metrics.plot()
            self.live.print(self._eval_line(), markup=False)  # a sample or a folder name may hold "[/x]"
            if note := self.stage.eval_note(record):
                self.live.print(f"[yellow]warning: {escape(note)}[/]")

    def _eval_line(self) -> str:
        cfg = self.cfg
        sample = ""
        if self.tokenizer is not None and cfg.sample_tokens > 0:
            sample = sample_text(self.model, self.tokenizer, cfg.sample_prompt, self.stage.chat, cfg.sample_tokens,
                                 self.stepper.autocast, cfg.seed)
        bpb = f"{self.val_bpb:.3f}" if self.val_bpb is not None else "n/a"
        train = f"train loss {self.last_loss:.4f}  " if math.isfinite(self.last_loss) else ""
        return (f"step {self.step}: {train}val loss {self.val_loss:.4f}  val bpb {bpb}{source_figures(self.val_sources)}"
                f"  | {cfg.sample_prompt!r} -> {sample!r}")

    def save(self) -> None:
        if self.main:
            run_info = {"stage": self.spec.stage, "data": str(self.spec.data), "mixture": self.data_record,
                        **self.parent, "world_size": self.d.world_size,
                        "config": self.cfg.to_dict(), "auto_micro_batch": self.auto and self.auto.to_dict()}
            save_checkpoint(self.run_folder, self.model, self.stepper.optimizer, self.stepper.scaler, self.step,
                            self.identity, self.data_kind, self.stage.chat, run_info, self.tokenizer_files,
                            adapter=self.lora and self.lora.record())
        self.saved_step = self.step

    def train_step(self, stop: StopFlag) -> StepStats:
        """One optimizer step, never applied if its loss or gradient norm is not finite or a stop signal came."""
        cfg, d = self.cfg, self.d
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(cfg.seed, self.step, d.rank))
        lr = lr_at(self.step, cfg)
        with stop.abandonable():
            stats = self.stepper.forward_backward(self.loader.get(self.step), lr, stop.requested)
        self.last_loss = stats.loss
        bad = self.stepper.divergence(stats)
        if bad:
            where = (f"the last good checkpoint (step {self.saved_step}) is in {self.run_folder.checkpoint}"
                     if self.saved_step > 0 else "no checkpoint was written")
            raise TrainError(f"step {self.step + 1}: {bad}; the step was not applied and the run stops ({where}). "
                             "Try a lower learning rate (--set lr=...) or check the data.")
        self.stepper.apply()
        self.step += 1
        self._log(stats, lr, time.perf_counter() - t0)
        return stats

    def _log(self, stats: StepStats, lr: float, seconds: float) -> None:
        tokens = self.cfg.batch_size * self.cfg.model.block_size
        self.rates.append(tokens / seconds)
        flops = self.model.flops_per_token(self.cfg.model.block_size) * tokens / seconds
        rec = {"step": self.step, "loss": stats.loss, "lr": lr, "tokens_per_s": tokens / seconds,
               "mfu": self.peak.utilisation(flops), "grad_norm": stats.grad_norm, **stats.metrics}
        if self.main and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.max_steps):
            self.metrics.write(rec)
            self.live.update(rec)
        if self.main and self.d.device.type == "cuda" and (line := cuda_memory_check(
                len(self.rates), self.cfg, self.cfg.model.vocab_size, self.d.world_size, self.d.device,
                self.precision.name, self.stepper.compiled)):
            self.live.print(line)  # the measured peak beside the plan's

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        try:
            if self.spec.stop_at is not None and self.spec.stop_at <= self.step:
                raise TrainError(f"--stop-at {self.spec.stop_at}: the run is already at step {self.step}; give a later step")
            with StopFlag(immediate=not self.d.enabled) as self.stop, \
                    LiveView(self.cfg.max_steps, self.step, self.main, self.console) as self.live:
                try:
                    reason = self._loop()
                except StepAbandoned:  # a stop signal inside a step: its gradients are dropped, never applied
                    self.stepper.optimizer.zero_grad()
                    reason = "interrupted"
                if self.saved_step != self.step:
                    self.save()
        finally:
            self.close()
        self.d.barrier()
        return self._result(reason, self.stop.signal)

    def _loop(self) -> str:
        if self.step == 0:  # where the curve starts: ln(vocab) for a fresh model, lower from --init
            self.evaluate()
        while self.step < self.cfg.max_steps:
            if self.spec.stop_at is not None and self.step >= self.spec.stop_at:
                return "stop_at"
            stats = self.train_step(self.stop)
            last = self.step == self.cfg.max_steps
            if self.step % self.cfg.eval_every == 0 or last:
                self.evaluate()
            if self.step % self.cfg.ckpt_every == 0 or last:
                self.save()
            if stats.stop_votes > 0:
                return "interrupted"
        return "done"

    def close(self) -> None:
        self.loader.close()
        if self.metrics is not None:
            self.metrics.close()

    def _result(self, reason: str, signum: int | None) -> RunResult:
        steady = self.rates[1:] or self.rates  # the first step pays for compilation and warm-up
        result = RunResult(self.step, reason, None if math.isnan(self.last_loss) else self.last_loss, self.val_loss,
                           self.val_bpb, self.val_step, float(np.median(steady)) if steady else None,
                           time.perf_counter() - self.wall_start, signum if reason == "interrupted" else None,
                           self.val_sources)
        if self.main:
            print_summary(self.console, result, self.run_folder)
        return result
