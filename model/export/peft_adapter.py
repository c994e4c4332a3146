"""Export a LoRA run's adapters as a PEFT adapter folder (``make export ADAPTER=1``).

The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` in peft's own layout, for the
Hugging Face export of the run's *base* (``make export CKPT=<base>``, `model.export.hf`):

    base = AutoModelForCausalLM.from_pretrained("runs/pretrain/hf")
    model = PeftModel.from_pretrained(base, "runs/sft/hf-adapter")

Our block layers carry the Hugging Face classes' own names (``transformer.h.0.attn.c_attn``,
``model.layers.0.self_attn.q_proj``), so each adapter keeps its name under peft's prefix
(``base_model.model.``) with the adapter's own name dropped; every name is checked against the base
export's tensors. GPT-2's Hugging Face layers are ``Conv1D`` (weights stored in x out): peft's
``fan_in_fan_out`` covers that, and its A and B matrices have the same shapes as on our `nn.Linear`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.outputs import OutputFolder
from model.adapters import adapter_record, checked_base, read_adapters
from model.archs import config_from_dict
from model.export.hf import mapping_of
from model.io import CheckpointError, read_model_info, save_weights
from model.lora import ADAPTER_KEY

PEFT_PREFIX = "base_model.model."
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}


def peft_names(state: dict, hf_weights: set[str]) -> dict:
    """Our adapter tensors under peft's names: ``<hf module>.lora_A.weight`` after the prefix."""
    out = {}
    for name, tensor in state.items():
        module, _, rest = name.partition(ADAPTER_KEY)
        kind = rest.split(".")[0]  # A or B; the adapter's own name ("default") follows
        if f"{module}.weight" not in hf_weights:
            raise CheckpointError(f"{name}: no layer {module} in the Hugging Face export; cannot map the adapter")
        out[f"{PEFT_PREFIX}{module}.lora_{kind}.weight"] = tensor
    return out


def adapter_config(record: dict, modules: list[str], fan_in_fan_out: bool, base: str) -> dict:
    """adapter_config.json, written by peft's own `LoraConfig` so every field is one it reads back."""
    from peft import LoraConfig  # only this export needs peft among the exports

    config = LoraConfig(r=record["rank"], lora_alpha=record["alpha"], lora_dropout=record["dropout"],
                        target_modules=modules, bias="none", task_type="CAUSAL_LM", fan_in_fan_out=fan_in_fan_out,
                        base_model_name_or_path=base)
    d = config.to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in d.items()}


def export_adapter(ckpt: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the PEFT adapter folder of a LoRA run's checkpoint `ckpt` into `out`; returns a summary."""
    info = read_model_info(ckpt)
    record = adapter_record(info)
    if record is None:
        raise CheckpointError(f"{ckpt}: a full model, not a LoRA run's adapters; `make export` without ADAPTER=1 "
                              "writes it")
    base_path, _ = checked_base(info, ckpt)  # the adapters fit that base only
    config = config_from_dict(info["config"])
    table = mapping_of(_Shape(config))
    hf_weights = set(table.state_dict(_meta_state(config), config))
    tensors = peft_names(read_adapters(ckpt), hf_weights)
    modules = sorted({k.removeprefix(PEFT_PREFIX).rsplit(".lora_", 1)[0] for k in tensors})
    conf = adapter_config(record, modules, config.arch == "gpt2", str(base_path / "hf"))
    with OutputFolder(out, "peft-adapter", "PEFT adapter export", lambda _: None) as folder:
        save_weights(tensors, folder.path("adapter_model.safetensors"), {"format": "pt"})
        folder.path("adapter_model.safetensors").chmod(0o644)
        folder.path("adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", "utf-8")
        folder.path("README.md").write_text(_card(Path(out), base_path, record), "utf-8")
        folder.commit()
    return {"out": str(out), "base": str(base_path), "tensors": len(tensors),
            "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}


class _Shape:
    """What `mapping_of` asks of a model: its config."""

    def __init__(self, config):
        self.config = config


def _meta_state(config) -> dict:
    """Our state-dict names and shapes without memory (the HF table maps names; shapes only for layouts)."""
    import torch

    from model.archs import build

    with torch.device("meta"):
        return build(config).state_dict()


def _card(out: Path, base: Path, record: dict) -> str:
    return f"""# {out.name}

LoRA adapters (rank {record["rank"]}, alpha {record["alpha"]}) trained by zh-mini-llm on the model in `{base}`
(step {record["base"].get("step")}). Load them onto that model's Hugging Face export (`make export CKPT={base}`):

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{base / 'hf'}")
model = PeftModel.from_pretrained(base, "{out}")
```

`model.merge_and_unload()` gives the plain model that `make export` writes from the LoRA run itself.
"""
