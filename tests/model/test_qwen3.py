"""arch qwen3: the cache holds only the key/value heads and agrees with a plain forward, rows of
different lengths, a long context, tied or untied output, and wrong shapes as one-line errors."""

from __future__ import annotations

import re

import pytest
import torch

from model.archs import build, config_for
from model.archs.qwen3 import Qwen3Config
from model.generate import Engine
from model.sampling import SamplingParams
from tests.model.conftest import tiny_qwen3
from train.overrides import apply_overrides
from train.presets import preset

N_VOCAB, EOT = 259, 256


def test_the_cache_holds_only_the_key_value_heads_and_matches_a_plain_forward():
    model = tiny_qwen3()
    ids = torch.randint(0, N_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache()
    with torch.no_grad():
        full = model(ids)
        parts = torch.cat([model(ids[:, :7], cache=cache), model(ids[:, 7:], cache=cache)], dim=1)
    assert cache.k[0].shape == (2, 2, 32, 8)  # 2 key/value heads of 8, not the 4 query heads
    torch.testing.assert_close(parts, full, atol=1e-5, rtol=1e-5)


def test_rows_of_different_lengths_match_each_row_alone():
    model = tiny_qwen3()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41], [90, 91, 92, 93]]
    with torch.no_grad():
        rows = model.new_cache()
        width = max(map(len, prompts))
        padded = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
        model(padded, cache=rows, start_pos=[0, 0, 0])  # each row's own tokens first; padding is overwritten
        nxt = torch.tensor([[3], [4], [5]])
        batched = model(nxt, cache=rows, start_pos=[len(p) for p in prompts])[:, -1]
        for r, p in enumerate(prompts):
            single = model(torch.tensor([p + [int(nxt[r])]]))[0, -1]
            torch.testing.assert_close(batched[r], single, atol=1e-5, rtol=1e-5)


def test_greedy_generation_with_a_1024_token_context():
    model = tiny_qwen3(block_size=1024)
    engine = Engine(model, N_VOCAB, [EOT])
    prompt = list(range(1, 200)) * 4  # 796 tokens
    params = SamplingParams(max_new_tokens=40, temperature=0)
    cached = engine.generate(prompt, params)[0].tokens
    assert cached == engine.generate(prompt, params, use_cache=False)[0].tokens
    assert len(cached) == 40


def test_untied_output_layer_has_its_own_weight():
    tied, untied = (build(Qwen3Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, tie_embeddings=t))
                    for t in (True, False))
    assert untied.num_params() - tied.num_params() == 64 * 16 and untied.num_params(True) == tied.num_params(True)
    assert "lm_head.weight" in untied.state_dict() and "lm_head.weight" not in tied.state_dict()
    assert tied.num_params() == tied.config.param_counts()[0] and untied.num_params() == untied.config.param_counts()[0]


def test_defaults_match_gpt2_matmul_weights_per_layer():
    """--set arch=qwen3 on a preset costs the same per token: half the key/value heads, SwiGLU 3·C wide."""
    gpt = preset("tiny").model
    qwen = apply_overrides(preset("tiny"), ["arch=qwen3"]).model
    assert (qwen.arch, qwen.kv_heads, qwen.ffn_width) == ("qwen3", 2, 384)
    assert qwen.matmul_weights_per_layer() == gpt.matmul_weights_per_layer()
    assert preset("qwen3-tiny").model == qwen
    assert preset("qwen3-mini").model.matmul_weights_per_layer() == preset("mini").model.matmul_weights_per_layer()


@pytest.mark.parametrize("sets, message", [
    (["arch=qwen3", "n_kv_head=3"], "n_kv_head (3) must divide n_head (4)"),
    (["arch=qwen3", "n_head=8", "n_embd=24"], "even head size"),
    (["arch=qwen3", "rope_theta=0"], "rope_theta = 0.0, expected a number from 10 to 1e+09"),
    (["arch=qwen3", "rope_theta=1e-300"], "rope_theta = 1e-300"),
    (["arch=qwen3", "rms_norm_eps=1e-300"], "rms_norm_eps = 1e-300"),
    (["layer_norm_eps=0"], "layer_norm_eps = 0.0"),
    (["n_kv_head=2"], "arch gpt2 has no field 'n_kv_head'"),
])
def test_wrong_shapes_are_one_line_errors(sets, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        apply_overrides(preset("tiny"), sets)
    assert "\n" not in str(e.value)


def test_a_later_n_head_moves_the_default_key_value_heads_along():
    cfg = apply_overrides(preset("qwen3-tiny"), ["n_head=8"])
    assert cfg.model.kv_heads == 4 and cfg.model.n_kv_head == 0
    assert config_for("qwen3", cfg.model, {"n_embd": 256}).ffn_width == 768
