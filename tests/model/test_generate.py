"""The generation engine: cache == no cache, sliding past the block, sampling options, stops, streaming."""

from __future__ import annotations

import pytest
import torch

from model.generate import Engine, TextStream, stream_text
from model.sampling import SamplingParams
from tests.model.conftest import favour, tiny_model

EOT, IM_START, IM_END = 256, 257, 258
N_VOCAB = 259  # the bytes tokenizer; the model has 384 rows (padded)
GREEDY = SamplingParams(max_new_tokens=40, temperature=0)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(tiny_model(block_size=16), N_VOCAB, [EOT])


@pytest.mark.parametrize("prompt", [[1, 2, 3], [72, 105], list(range(30, 45)), list(range(100, 140))],
                         ids=["short", "two", "almost-a-block", "longer-than-block"])
def test_greedy_with_cache_equals_greedy_without(engine, prompt):
    params = SamplingParams(max_new_tokens=50, temperature=0)
    cached = engine.stream(prompt, params)
    with_cache = [step[0] for step in cached]
    without_cache = [step[0] for step in engine.stream(prompt, params, use_cache=False)]
    assert with_cache == without_cache
    assert len(with_cache) == 50 and None not in with_cache  # nothing stopped early: all 50 compared
    assert cached.slides >= 2  # block 16: the context slid several times and still matched
    assert len(set(with_cache)) > 5  # a varied sequence, not one token repeated


def test_cache_agrees_with_a_plain_forward_before_any_slide(engine):
    """Independent of the engine's own no-cache path: argmax of the full forward, token by token."""
    ids = [5, 6, 7]
    expected = []
    for _ in range(12):  # 3 + 12 < 16: never slides
        logits = engine.model(torch.tensor([ids]))[0, -1, :N_VOCAB]
        ids.append(int(logits.argmax()))
        expected.append(ids[-1])
    got = engine.generate([5, 6, 7], SamplingParams(max_new_tokens=12, temperature=0))[0].tokens
    assert got == expected


def test_top_k_1_is_greedy_whatever_the_temperature(engine):
    greedy = engine.generate([1, 2, 3], GREEDY)[0].tokens
    top1 = engine.generate([1, 2, 3], SamplingParams(max_new_tokens=40, temperature=1.5, top_k=1, seed=9))[0].tokens
    assert top1 == greedy


def test_seed_reproduces_and_differs(engine):
    params = SamplingParams(max_new_tokens=30, temperature=1.0, top_k=0, seed=7)
    a = engine.generate([1, 2, 3], params)[0].tokens
    b = engine.generate([1, 2, 3], params)[0].tokens
    c = engine.generate([1, 2, 3], SamplingParams(max_new_tokens=30, temperature=1.0, top_k=0, seed=8))[0].tokens
    assert a == b
    assert a != c


def test_several_samples_are_one_batch_with_different_draws(engine):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=0, num_samples=3, seed=3)
    rows = [c.tokens for c in engine.generate([1, 2, 3], params)]
    assert len(rows) == 3 and all(len(r) == 20 for r in rows)
    assert len({tuple(r) for r in rows}) == 3
    greedy_rows = engine.generate([1, 2, 3], SamplingParams(max_new_tokens=20, temperature=0, num_samples=3))
    single = engine.generate([1, 2, 3], SamplingParams(max_new_tokens=20, temperature=0))[0].tokens
    assert all(c.tokens == single for c in greedy_rows)


def test_padded_vocabulary_rows_are_never_produced():
    model = favour(tiny_model(), range(N_VOCAB, 384))  # the padded rows are by far the likeliest
    assert int(model(torch.tensor([[1, 2]]))[0, -1].argmax()) >= N_VOCAB
    engine = Engine(model, N_VOCAB, [EOT])
    for params in (GREEDY, SamplingParams(max_new_tokens=40, temperature=2.0, top_k=0, num_samples=4)):
        for c in engine.generate([1, 2], params):
            assert c.tokens and max(c.tokens) < N_VOCAB


def test_stop_tokens_end_a_sample_and_are_not_returned():
    model = favour(tiny_model(), [IM_END])
    chat = Engine(model, N_VOCAB, [IM_END, EOT])
    done = chat.generate([1, 2], GREEDY)[0]
    assert done.tokens == [] and done.finish_reason == "stop" and done.stop_token == IM_END
    base = Engine(model, N_VOCAB, [EOT])  # <|im_end|> is only a token to a base model
    going = base.generate([1, 2], SamplingParams(max_new_tokens=5, temperature=0))[0]
    assert going.tokens == [IM_END] * 5 and going.finish_reason == "length"


def test_ended_samples_stop_while_others_go_on():
    model = favour(tiny_model(), [EOT], strength=1.0)  # eot likely, not certain
    engine = Engine(model, N_VOCAB, [EOT])
    run = engine.stream([1, 2], SamplingParams(max_new_tokens=60, temperature=1.0, top_k=0, num_samples=6, seed=0))
    steps = list(run)
    for row in range(6):
        column = [s[row] for s in steps]
        if run.finish[row] == "stop":
            first_none = column.index(None)
            assert all(t is None for t in column[first_none:])  # nothing after the stop
            assert EOT not in column[:first_none]
        assert run.n_new[row] == sum(t is not None for t in column)
    assert "stop" in run.finish


def test_bad_prompts_are_refused(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([], GREEDY)
    with pytest.raises(ValueError, match="outside the tokenizer"):
        engine.generate([1, 300], GREEDY)  # a padded id


def test_generation_leaves_grad_mode_alone(engine):
    run = iter(engine.stream([1, 2, 3], GREEDY))
    next(run)
    assert torch.is_grad_enabled()  # no_grad is never held across a yield


def test_streaming_bytes_of_chinese_never_prints_replacement_chars(byte_tokenizer):
    text = "数学是研究数量、结构、变化以及空间等概念的一门学科。"
    ids = byte_tokenizer.encode(text)  # every CJK character spans 3 tokens here
    stream = TextStream(byte_tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == text
    assert pieces[:3] == ["", "", "数"]  # held back until the character is whole
    assert byte_tokenizer.decode(ids[:1]) == "\ufffd"  # what naive per-token decoding would print


def test_streaming_real_tokenizer_split_characters(qwen):
    text = "龘𪚥是罕见字，数学是研究数量的学科"
    ids = qwen.encode(text)
    assert any(qwen.decode([i]) == "\ufffd" or "\ufffd" in qwen.decode([i]) for i in ids)  # split characters exist
    pieces = list(stream_text(ids, qwen))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_invalid_bytes_still_show_up_at_the_end(byte_tokenizer):
    assert "".join(stream_text([0xE6, 0x95], byte_tokenizer)) == "\ufffd"  # a cut-off character is not hidden


def test_a_character_cut_by_the_token_limit_is_dropped_not_garbled(byte_tokenizer):
    """Eval samples end at a token limit, often inside a character: they leave it out, not print U+FFFD."""
    ids = list("数学".encode())  # six byte tokens, two characters
    assert "".join(stream_text(ids[:4], byte_tokenizer, final=False)) == "数"
    assert "".join(stream_text(ids[:4], byte_tokenizer)) == "数\ufffd"  # a finished stream shows the broken bytes
    assert "".join(stream_text(ids, byte_tokenizer, final=False)) == "数学"
