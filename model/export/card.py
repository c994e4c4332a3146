"""The model card: what a model is, how it was made and how to run it, from the files its runs wrote.

`lineage_facts` walks a checkpoint back through the runs it started from (``train_config.json``'s
``init``) and reads, per stage, its steps, tokens, training time (from the step rates in
``metrics.jsonl``), last validation loss and bits per byte, recipe and data. `render_card` writes the
Hugging Face model card (a YAML header, then prose and code that runs as written with the installed
transformers); ``train all`` prints the same facts (`stage_lines`) and writes them into its report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.outputs import read_json
from model.io import INFO_NAME, RunFolder, resolve_model_dir

TRAIN_CONFIG = "train_config.json"  # written by every checkpoint (train.checkpoint)
MAX_STAGES = 16  # a lineage longer than this loops (a run that names itself as --init)


def _stage_facts(model_dir: Path) -> dict:
    info, run = read_json(model_dir / INFO_NAME), _read(model_dir / TRAIN_CONFIG)
    config = run.get("config", {})
    model = config.get("model", {})
    step = int(info.get("step", 0))
    tokens = step * int(config.get("batch_size", 0)) * int(model.get("block_size", 0))
    seconds, val = _from_metrics(RunFolder.of(model_dir).metrics, step, tokens)
    return {"stage": run.get("stage", info.get("data_kind")), "run": str(RunFolder.of(model_dir).path),
            "step": step, "max_steps": config.get("max_steps"), "tokens": tokens, "train_s": seconds,
            "val_loss": val.get("val_loss"), "val_bpb": val.get("val_bpb"), "recipe": config.get("recipe", "seed"),
            "arch": model.get("arch", "gpt2"), "optimizer": config.get("optimizer", "adamw"), "lr": config.get("lr"),
            "muon_lr": config.get("muon_lr") if config.get("optimizer") == "muon" else None,
            "data": run.get("data"), "inputs": _data_inputs(run.get("data")), "init": run.get("init")}


def lineage_facts(ckpt: str | os.PathLike) -> list[dict]:
    """Each stage from the first (pretraining) to `ckpt`'s; a run whose --init is gone ends the walk."""
    stages, here = [], resolve_model_dir(ckpt)
    while here is not None and len(stages) < MAX_STAGES:
        facts = _stage_facts(here)
        stages.insert(0, facts)
        try:
            here = resolve_model_dir(facts["init"]) if facts["init"] else None
        except ValueError:  # the run it started from was moved or deleted: what is left is still true
            here = None
    return stages


def _read(path: Path) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_metrics(path: Path, step: int, tokens: int) -> tuple[float | None, dict]:
    """Training seconds (each logged step's tokens over its rate) and the last eval at or before `step`."""
    per_step, rates, val = (tokens / step if step else 0), {}, {}
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError:
        return None, {}
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or row["step"] > step:
            continue
        if row.get("tokens_per_s"):
            rates[row["step"]] = row["tokens_per_s"]  # a resumed run logs a step again: the last one counts
        if "val_bpb" in row:
            val = row
    seconds = sum(per_step / r for r in rates.values()) if rates else None
    return seconds, val


def _data_inputs(data: str | None) -> list[str]:
    """The raw inputs a token folder (or each folder of a mixture) was made from, as its meta.json says."""
    if not data:
        return []
    inputs = []
    for part in str(data).split(","):
        meta = _read(Path(part.rsplit(":", 1)[0] if not Path(part).exists() else part) / "meta.json")
        options = meta.get("options", {})
        if options.get("input"):
            inputs.append(f"{options['input']} ({options.get('command', '?')}, tokenizer {options.get('tokenizer')})")
    return inputs


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def stage_lines(stages: list[dict]) -> list[str]:
    """One markdown table row per stage (the card's and ``train all``'s report's)."""
    rows = ["| stage | recipe | steps | tokens | training time | val loss | val bits/byte |", "|---|---|---|---|---|---|---|"]
    for s in stages:
        opt = s["optimizer"] + (f" (muon_lr {s['muon_lr']}, lr {s['lr']})" if s["muon_lr"] else f" (lr {s['lr']})")
        rows.append(f"| {s['stage']} | {s['recipe']}: {s['arch']}, {opt} | {s['step']:,} | {s['tokens']:,} | "
                    f"{_duration(s['train_s'])} | {_fmt(s['val_loss'])} | {_fmt(s['val_bpb'])} |")
    return rows


HELDOUT_NAME = "heldout_bpb.json"  # in a run folder: `train all`'s bits per byte on held-out text
CARD_NEW_TOKENS = 100


def _usage(out: Path, chat: bool, block_size: int) -> str:
    """The card's Python snippet: runs as written with transformers 4.45+ and 5.x (a chat template with
    ``return_dict=True`` gives input ids and attention mask in both)."""
    prompt = ('messages = [{"role": "user", "content": "数学是什么？"}]\n'
              'inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
              'return_dict=True)\n') if chat else 'inputs = tok("数学是", return_tensors="pt")\n'
    return (f'from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
            f'tok = AutoTokenizer.from_pretrained("{out}")\nmodel = AutoModelForCausalLM.from_pretrained("{out}")\n'
            f'{prompt}room = {block_size} - inputs["input_ids"].shape[1]  # the context it was trained on holds both\n'
            f'out = model.generate(**inputs, max_new_tokens=min({CARD_NEW_TOKENS}, room), do_sample=False)\n'
            f'print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n')


def evaluation_lines(run: Path) -> list[str]:
    """Held-out bits per byte and harness scores where the run folder holds them."""
    lines = []
    heldout = _read(run / HELDOUT_NAME)
    if heldout.get("bpb") is not None:
        lines.append(f"- bits per byte on held-out text `{heldout.get('text')}`: **{heldout['bpb']:.3f}** "
                     f"({heldout.get('bytes', 0):,} bytes; `make bpb`)")
    for path in sorted(RunFolder(run).harness.glob("*.json")) if RunFolder(run).harness.is_dir() else []:
        results = _read(path).get("results", {})
        for task, metrics in results.items():
            scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float) and "stderr" not in k)
            lines.append(f"- harness `{task}`: {scores} (`{path.name}`)")
    return lines or ["- no held-out or harness evaluation was run on this model (`make bpb`, `make harness`)"]


def _tokenizer_name(tok) -> str:
    if (Path(str(tok.name)) / "cut_vocab.json").is_file():
        return "Qwen2's, cut to the training corpus (`prep vocab`)"
    return f"`{tok.name}`"


def _front_matter(stages: list[dict], c: dict) -> str:
    """The card's YAML header: the Hugging Face fields, and the runs the model came through."""
    lineage = "\n".join(f"  - {s['run']}" for s in stages)
    return f"""---
language:
  - zh
license: mit
library_name: transformers
pipeline_tag: text-generation
tags:
  - zh-mini-llm
  - {c.get("arch", "gpt2")}
  - recipe-{stages[-1]["recipe"]}
zh_mini_llm_lineage:  # the runs this model was trained through, first to last (local paths)
{lineage}
---
"""


def render_card(out: Path, info: dict, tok, chat: bool, tokenizer_written: bool, architecture: str,
                ckpt: str | os.PathLike) -> str:
    """The Hugging Face model card (README.md) of the export `out` of `ckpt`."""
    stages, c = lineage_facts(ckpt), info["config"]
    last = stages[-1]
    inputs = sorted({i for s in stages for i in s["inputs"]}) or [str(s["data"]) for s in stages]
    kind = "chat model (SFT, ChatML)" if chat else "base model (continues text)"
    tok_note = "" if tokenizer_written else f"\nThe `{tok.name}` tokenizer has no Hugging Face form; no tokenizer files are included.\n"
    return _front_matter(stages, c) + f"""
# {Path(last["run"]).name if out.name == "hf" else out.name}

A small Chinese {kind} trained from scratch with zh-mini-llm (`make all`): the architecture of
`{architecture}`, {c["n_layer"]} layers, {c["n_head"]} heads, {c["n_embd"]} wide, a context of
{c["block_size"]} tokens, tokenizer {_tokenizer_name(tok)} ({len(tok):,} ids; the embedding is padded to
{c["vocab_size"]:,} rows and `generation_config.json` suppresses the padding).
{tok_note}
## Training data

{chr(10).join(f"- {i}" for i in inputs)}

## Recipe and stages

Recipe `{last["recipe"]}` (zh-mini-llm's `common/recipes.py` says what it means and which measurements chose
it). Tokens are optimizer steps × batch × context; training time is from the logged step rates.

{chr(10).join(stage_lines(stages))}

## Evaluation

{chr(10).join(evaluation_lines(RunFolder.of(resolve_model_dir(ckpt)).path))}

## Use it

transformers (offline from this folder):

```python
{_usage(out, chat, c["block_size"])}```

llama.cpp and Ollama, from the checkpoint this folder was exported from (zh-mini-llm writes the GGUF):

```bash
make gguf CKPT={last["run"]}                 # -> model-f16.gguf beside the checkpoint
llama-cli -m {last["run"]}/model-f16.gguf -c {c["block_size"]} -n 32 -p "数学是"
make ollama CKPT={last["run"]}               # GGUF + Modelfile, then the `ollama create` line it prints
```

## Limits

A model of {sum(1 for _ in stages)} stage(s) and {last["tokens"]:,} tokens in its last stage is small: it writes
Chinese-looking text and short replies, not reliable facts; do not use its output where facts matter.
Inputs and replies together must fit in {c["block_size"]} tokens. It inherits the terms of its training data
(Chinese Wikipedia: CC BY-SA; Belle dialogs: see their release) beside this card's MIT license of the code.
"""
