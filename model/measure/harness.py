"""Standard benchmarks (C-Eval, CMMLU, ...) on a checkpoint, run by lm-evaluation-harness itself.

lm-eval owns everything that makes a figure comparable with published ones: the task configs,
prompts, few-shot sampling, metrics and standard errors. We hand it our checkpoint through the
``zh-mini-llm`` model type (`model.measure.lm_adapter`, which says why it is an adapter and not the Hugging
Face export), and add three things: a table with each metric's chance level, a results file under
the run folder (``RUN/harness/<tasks>_<time>.json``, with lm-eval's version, every task's config and
a hash of its prompts and targets, so two runs can be told comparable or not), and a quick, one-line
failure where the datasets cannot be had.

Real tasks download their datasets from the Hugging Face hub on first use (then ``datasets`` caches
them). Where the hub cannot be reached, or ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set, the
run switches ``datasets`` to offline mode before it is imported: cached datasets still load, and a
missing one fails at once with one line instead of minutes of retries.

lm-eval is an optional extra (``pip install -e '.[eval]'``); nothing outside this module and the
adapter imports it, and both import it only when a harness run starts.
"""

from __future__ import annotations

import math
import os
import re
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from common.errors import UserError
from model.io import RunFolder, resolve_model_dir
from prep.records import first_line

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_PROBE_SECONDS = 3.0


class HarnessError(UserError, ValueError):
    """A harness run that cannot start or finish: lm-eval missing, unknown tasks, data out of reach."""


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise HarnessError("lm-eval is not installed: pip install -e '.[eval]' (make harness installs it on "
                           "first use)") from None


def hub_offline_reason(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """None if the hub answers; otherwise why not, with offline mode switched on for this process."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            reason = f"{var}={os.environ[var]}"
            break
    else:
        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        port = url.port or (80 if url.scheme == "http" else 443)
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            return None
        except OSError:
            reason = f"{url.hostname} is not reachable"
    for var in OFFLINE_VARS:
        os.environ[var] = "1"
    if "huggingface_hub.constants" in sys.modules:  # read at import: set the constants too
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        config = sys.modules["datasets.config"]
        config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = True
    return reason


def task_manager(names: list[str], include_paths: list[Path]):
    """lm-eval's task index, over only the folders that define `names` when that is enough.

    Indexing all of lm-eval's ~14,000 task YAMLs takes 10-20 s on a small machine; the folders whose
    YAMLs name the tasks (``lm_eval/tasks/ceval`` for ceval-valid) take a second. Anything the narrow
    index cannot resolve falls back to the full one.
    """
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    for p in include_paths:
        if not p.exists():
            raise HarnessError(f"{p}: no such folder; --include-path takes a folder of lm-eval task YAMLs")
    folders = _folders_naming(names, Path(lm_eval.tasks.__file__).parent) + [str(p) for p in include_paths]
    if folders:
        narrow = TaskManager(include_path=folders, include_defaults=False)
        if all(_resolves(narrow.task_index, n) for n in names):
            return narrow
    manager = TaskManager(include_path=[str(p) for p in include_paths] or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise HarnessError(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: see `lm-eval ls tasks`; "
                           "a task of your own needs --include-path FOLDER_WITH_ITS_YAML")
    return manager


def _folders_naming(names: list[str], root: Path) -> list[str]:
    """Folders under `root` with a YAML whose ``task:`` or ``group:`` line is one of `names`."""
    patterns = [re.compile(rb"^\s*(?:task|group):\s*['\"]?" + re.escape(n.encode()) + rb"['\"]?\s*$", re.M)
                for n in names]
    folders = set()
    for path in root.rglob("*.yaml"):
        data = path.read_bytes()
        if any(p.search(data) for p in patterns):
            folders.add(path.parent)
    return sorted(map(str, folders))


def _resolves(index: dict, name: str, seen: tuple[str, ...] = ()) -> bool:
    """Whether a task, tag or group (with all its members, recursively) is in a task index."""
    entry = index.get(name)
    if entry is None or name in seen or entry.kind.name != "GROUP":
        return entry is not None
    for member in entry.cfg.get("task", []):
        if isinstance(member, dict):
            if "dataset_path" in member or "include" in member:  # a task defined inside the group
                continue
            member = member.get("task") or member.get("group")
        if not isinstance(member, str) or not _resolves(index, member, seen + (name,)):
            return False
    return True


def run_harness(ckpt: str | os.PathLike, tasks: list[str], *, limit: float | None = None,
                num_fewshot: int | None = None, batch_size: int = 16, device: str = "auto", dtype: str = "auto",
                apply_chat_template: bool = False, fewshot_as_multiturn: bool = False,
                include_paths: list[Path] = (), seed: int = 1234, bootstrap_iters: int = 100_000,
                console=None) -> dict:
    """lm-eval's ``simple_evaluate`` on our checkpoint; its results dict, samples included."""
    require_lm_eval()
    offline = hub_offline_reason()
    import lm_eval

    from model.measure.lm_adapter import ZhMiniLM

    lm = ZhMiniLM(str(ckpt), device=device, dtype=dtype, batch_size=batch_size, console=console)
    manager = task_manager(tasks, list(include_paths))
    try:
        return lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=num_fewshot, batch_size=batch_size, device=str(lm.device), limit=limit,
            task_manager=manager, apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn if apply_chat_template else False,
            log_samples=True, bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed)
    except (ConnectionError, FileNotFoundError) as e:  # what `datasets` raises for data it cannot get
        raise HarnessError(_data_error(e, tasks, offline)) from None


def _data_error(e: Exception, tasks: list[str], offline: str | None) -> str:
    first = first_line(e)
    where = (f"the hub is offline here ({offline}); real tasks download their data once, then it is cached: "
             "run once where huggingface.co is reachable") if offline else "check the task's dataset_path and data_files"
    return f"cannot load the data of {', '.join(tasks)}: {first}; {where}"


def task_hashes(samples: dict) -> dict[str, str]:
    """sha256 over every sample's document, prompt and target hashes, as lm-eval's own tracker writes it."""
    from lm_eval.utils import hash_string

    return {task: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in ss))
            for task, ss in samples.items()}


def chance_levels(results: dict) -> dict[str, float]:
    """Accuracy of guessing uniformly among a multiple-choice task's choices; a group's is weighted by size."""
    leaf = {}
    for task, ss in results.get("samples", {}).items():
        if results["configs"].get(task, {}).get("output_type") == "multiple_choice" and ss:
            leaf[task] = (math.fsum(1 / len(s["arguments"]) for s in ss) / len(ss), len(ss))
    subtasks = results.get("group_subtasks", {})

    def level(name: str, seen: frozenset = frozenset()) -> tuple[float, int] | None:
        if name in leaf:
            return leaf[name]
        parts = [level(t, seen | {name}) for t in subtasks.get(name, []) if t not in seen]
        parts = [p for p in parts if p]
        n = sum(k for _, k in parts)
        return (math.fsum(c * k for c, k in parts) / n, n) if n else None

    return {name: lv[0] for name in results.get("results", {}) if (lv := level(name))}


def table_rows(results: dict, chance: dict[str, float], only: list[str] | None = None) -> list[tuple]:
    """``(task, metric, value, stderr, chance)`` for every metric of every task (or of `only`)."""
    rows = []
    for task, metrics in results["results"].items():
        if only is not None and task not in only:
            continue
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            name = metric if filt == "none" else f"{metric} ({filt})"
            rows.append((task, name, float(value), stderr if isinstance(stderr, (int, float)) else None,
                         chance.get(task) if metric.startswith("acc") else None))
    return rows


def default_out(ckpt: str | os.PathLike, tasks: list[str]) -> Path:
    """``RUN/harness/<tasks>_<YYYYmmdd-HHMMSS>.json``, beside (never inside) the checkpoint folder."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "+".join(tasks))[:80]
    return RunFolder.of(resolve_model_dir(ckpt)).harness / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}.json"


def results_document(results: dict, chance: dict[str, float], run_info: dict) -> dict:
    """What the results file holds: lm-eval's results without the per-sample records, plus ours."""
    doc = {k: v for k, v in results.items() if k != "samples"}
    doc["task_hashes"] = task_hashes(results.get("samples", {}))
    doc["chance"] = chance
    doc["zh_mini_llm"] = run_info
    return doc
