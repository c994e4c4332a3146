"""Teachers for the tests: transformers' Qwen2 / Qwen3 configs with random weights and Qwen2's vocabulary
(no weights can be downloaded here), as small as they go: the 151,680-wide head is what costs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prep.hf_tokenizer_files import write_qwen2_tokenizer_folder
from prep.tokenizer import load_tokenizer


def random_hf_teacher(folder: Path, arch: str = "qwen2", vocab_size: int = 151680) -> Path:
    """A one-layer, 16-wide random causal LM of `arch` with Qwen2's tokenizer files, saved to `folder`."""
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, bos_token_id=151643,
                  eos_token_id=151643, tie_word_embeddings=True)
    if arch == "qwen3":
        config = transformers.Qwen3Config(head_dim=8, **common)
        model = transformers.Qwen3ForCausalLM(config)
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    model.save_pretrained(folder)
    write_qwen2_tokenizer_folder(load_tokenizer("qwen2"), folder)
    return folder


@pytest.fixture(scope="session")
def hf_teacher(tmp_path_factory) -> Path:
    return random_hf_teacher(tmp_path_factory.mktemp("teacher") / "qwen2")
