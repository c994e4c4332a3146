"""An Ollama ``Modelfile`` beside a GGUF export, so ``ollama create NAME -f Modelfile`` imports it.

* ``FROM ./<file>.gguf``: a path relative to the Modelfile, so the folder can be moved as a whole.
* ``TEMPLATE``: for a chat model, ChatML in Ollama's Go-template syntax, rendering exactly what
  `prep.chat_template` trains on (system prompt first, then ``<|im_start|>user\\n…<|im_end|>\\n``
  followed by the assistant header, and earlier replies closed by ``<|im_end|>\\n``); for a base
  model the raw prompt, which it continues.
* ``PARAMETER stop``: ``<|im_end|>`` and ``<|endoftext|>`` (chat) or ``<|endoftext|>`` (base).
* ``PARAMETER num_ctx``: the model's context (``block_size``). The model has learned positions for
  exactly that many tokens and nothing past them, so ``num_predict`` caps a reply at half of it.
* sampling: the defaults of ``python -m model sample`` (`model.sampling.SamplingParams`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.outputs import atomic_file, check_replaceable_file, output_lock
from model.sampling import SamplingParams
from prep.tokenizer import ENDOFTEXT, IM_END

HEADER = "# Ollama Modelfile written by zh-mini-llm"  # a Modelfile that starts so may be replaced
MODELFILE = "Modelfile"

# Ollama's Go template: no {{- trimming anywhere, as every newline in it is one ChatML needs. System
# messages come from .System (the Modelfile's SYSTEM or the request's system message), not the loop.
CHATML_GO_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ range .Messages }}"
    '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
    '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>\n'
    "{{ end }}{{ end }}"
)
RAW_TEMPLATE = "{{ .Prompt }}"



def ollama_model_name(gguf_name: str) -> str:
    """A name ``ollama create`` accepts, from ``general.name`` ("zh-mini-llm sft" -> "zh-mini-llm-sft")."""
    return re.sub(r"[^a-z0-9._-]+", "-", gguf_name.lower()).strip("-.") or "zh-mini-llm"


def modelfile_text(gguf_file: str, chat: bool, context: int, source: str,
                   defaults: SamplingParams | None = None) -> str:
    d = defaults or SamplingParams()
    stops = [IM_END, ENDOFTEXT] if chat else [ENDOFTEXT]
    template = CHATML_GO_TEMPLATE if chat else RAW_TEMPLATE
    kind = "chat model (ChatML)" if chat else "base model (continues text)"
    lines = [
        HEADER,
        f"# from {' '.join(source.splitlines())}: a {kind}, context {context} tokens",
        f"FROM ./{gguf_file}",
        f'TEMPLATE """{template}"""',
        *(f'PARAMETER stop "{s}"' for s in stops),
        f"PARAMETER num_ctx {context}",
        f"PARAMETER num_predict {max(1, context // 2)}",
        f"PARAMETER temperature {d.temperature}",
        f"PARAMETER top_k {d.top_k}",
        f"PARAMETER top_p {d.top_p}",
        f"PARAMETER repeat_penalty {d.repetition_penalty}",
    ]
    return "\n".join(lines) + "\n"


def check_modelfile(out: Path) -> None:
    """Refuse (one line, nothing touched) to replace a Modelfile we did not write."""
    check_replaceable_file(out, lambda p: p.read_text("utf-8", errors="replace").startswith(HEADER), "Modelfile")


def write_modelfile(gguf_path: str | os.PathLike, chat: bool, context: int, source: str) -> Path:
    """Write ``Modelfile`` beside `gguf_path` (temporary file, then rename); refuse to replace a foreign one."""
    gguf_path = Path(gguf_path)
    out = gguf_path.parent / MODELFILE
    with output_lock(out, "Modelfile export", lambda: check_modelfile(out)):
        with atomic_file(out) as tmp:
            tmp.write_text(modelfile_text(gguf_path.name, chat, context, source), "utf-8")
    return out
