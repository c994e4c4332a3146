"""Prep shards as `datatrove` pipeline steps, so datatrove's executors (local, Slurm, Ray) run them.

The optional extra ``scale`` installs datatrove (``pip install -e '.[scale]'``); nothing else imports
this module. The project schedules no machines itself: an executor runs task ``rank`` of ``world_size``,
and `PrepShard` turns that into ``prep COMMAND INPUT --shard rank/world_size``, writing
``OUT/shard-00003-of-00008`` (zero-padded, so name order is shard order). `MergeShards`, run as one
task after them (``depends=``), writes the merged folder. datatrove records each finished task in its
``logging_dir`` and skips it on a rerun (``skip_completed``), so a failed or pre-empted array resumes
with the shards still missing. Example (docs/shards.md has Slurm and Ray)::

    from datatrove.executor import LocalPipelineExecutor
    from prep.datatrove_step import MergeShards, PrepShard

    shards = LocalPipelineExecutor([PrepShard("wiki", "wiki_zh", "data_bin/wiki.shards", workers=2)],
                                   tasks=8, workers=4, logging_dir="logs/prep-wiki")
    LocalPipelineExecutor([MergeShards("data_bin/wiki.shards", "data_bin/wiki")], tasks=1,
                          logging_dir="logs/merge-wiki", depends=shards).run()

`options` are the keyword arguments of the command's function (`prep.wiki.run_wiki`, `prep.text.run_text`,
`prep.sft.run_sft`, `prep.pref.run_pref`): ``tokenizer``, ``val_fraction``, ``workers`` (processes per
task: leave cores for the executor's other tasks), ``near_dedup`` (a `NearDedupConfig`), ...
"""

from __future__ import annotations

import importlib
from pathlib import Path

from prep.records import PrepError
from prep.shard import ShardSpec

try:
    from datatrove.pipeline.base import PipelineStep
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("prep.datatrove_step needs datatrove: pip install -e '.[scale]'") from e

RUNNERS = {"wiki": "prep.wiki:run_wiki", "text": "prep.text:run_text", "sft": "prep.sft:run_sft",
           "pref": "prep.pref:run_pref"}


def shard_folder(out: str | Path, rank: int, world_size: int) -> Path:
    """Where task `rank` of `world_size` writes its shard."""
    return Path(out) / f"shard-{rank:05d}-of-{world_size:05d}"


class PrepShard(PipelineStep):
    """Task ``rank`` of ``world_size``: ``prep COMMAND INPUT --shard rank/world_size`` into `shard_folder`."""

    name = "prep shard"
    type = "zh-mini-llm"

    def __init__(self, command: str, input: str | Path, out: str | Path, **options):
        super().__init__()
        if command not in RUNNERS:
            raise PrepError(f"PrepShard: command {command!r}, expected one of {', '.join(RUNNERS)}")
        self.command, self.input, self.out, self.options = command, str(input), Path(out), options

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        module, function = RUNNERS[self.command].split(":")
        run = getattr(importlib.import_module(module), function)
        meta = run(self.input, shard_folder(self.out, rank, world_size), shard=ShardSpec(rank, world_size),
                   show_progress=False, **self.options)
        self.stat_update("documents", value=meta["records"]["kept"])
        self.stat_update("tokens", value=sum(s["tokens"] for s in meta["splits"].values()))
        return data


class MergeShards(PipelineStep):
    """One task: `prep.merge.merge_shards` of every shard under `shards` into `out`."""

    name = "prep merge"
    type = "zh-mini-llm"

    def __init__(self, shards: str | Path, out: str | Path):
        super().__init__()
        self.shards, self.out = Path(shards), Path(out)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from prep.merge import merge_shards

        if world_size != 1:
            raise PrepError(f"MergeShards runs as one task, not {world_size}")
        merge_shards([self.shards], self.out)
        return data
