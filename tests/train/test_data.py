"""The block sampler: windows, masks, padding, purity, rank split; the fixed eval windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prep.tokenfile import open_token_folder
from train.data import BlockSampler, StepLoader, eval_starts, read_windows, tiling_starts


def test_pretrain_windows_are_shifted_slices_of_the_file(pretrain_data):
    split = open_token_folder(pretrain_data).split("train")
    sampler = BlockSampler(split, 32, 5, seed=3, sft=False)
    x, y, mask = sampler.micro_batch(step=4, index=1)
    assert x.shape == y.shape == mask.shape == (5, 32) and mask.all()
    tokens = np.asarray(split.tokens, dtype=np.int64)
    for row in range(5):
        hits = [i for i in range(len(tokens) - 32) if np.array_equal(tokens[i : i + 32], x[row])]
        assert hits, "x is a window of the file"
        assert np.array_equal(y[row], tokens[hits[0] + 1 : hits[0] + 33])


def test_batches_are_a_pure_function_of_seed_step_index(pretrain_data):
    split = open_token_folder(pretrain_data).split("train")
    a = BlockSampler(split, 32, 4, seed=1, sft=False)
    b = BlockSampler(split, 32, 4, seed=1, sft=False)
    same = [np.array_equal(a.micro_batch(7, 2)[0], b.micro_batch(7, 2)[0]) for _ in range(2)]
    assert all(same)
    assert not np.array_equal(a.micro_batch(7, 2)[0], a.micro_batch(7, 3)[0])  # another rank / micro-step
    assert not np.array_equal(a.micro_batch(7, 2)[0], a.micro_batch(8, 2)[0])  # another step
    c = BlockSampler(split, 32, 4, seed=2, sft=False)
    assert not np.array_equal(a.micro_batch(7, 2)[0], c.micro_batch(7, 2)[0])  # another seed


def test_one_process_with_2a_sees_the_data_of_two_ranks_with_a(pretrain_data):
    split = open_token_folder(pretrain_data).split("train")
    sampler = BlockSampler(split, 16, 2, seed=0, sft=False)
    cpu = torch.device("cpu")
    loaders = [StepLoader(sampler, rank, 2, 5, cpu) for rank in (0, 1)] + [StepLoader(sampler, 0, 4, 5, cpu)]
    try:
        r0, r1, single = (loader.get(5) for loader in loaders)
        assert loaders[2].get(6).step == 6  # the next step follows in order
    finally:
        for loader in loaders:
            loader.close()
    for got, want in zip(single.micro, r0.micro + r1.micro, strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert single.n_targets == r0.n_targets + r1.n_targets == 4 * 2 * 16


def test_sft_windows_start_at_user_turns_and_carry_the_shifted_mask(sft_data):
    split = open_token_folder(sft_data).split("train")
    sampler = BlockSampler(split, 48, 8, seed=0, sft=True)
    turn_starts = set(np.asarray(split.turn_starts).tolist())
    tokens = np.asarray(split.tokens, dtype=np.int64)
    file_mask = np.asarray(split.mask)
    def length(s: int) -> int:  # tokens of a window at s before the padding
        return min(48, len(tokens) - 1 - s)

    for step in range(3):
        x, y, mask = sampler.micro_batch(step, 0)
        for row in range(8):
            i = next(s for s in sorted(turn_starts) if np.array_equal(tokens[s : s + length(s)], x[row, : length(s)]))
            n = length(i)
            assert x[row, 0] == 257  # <|im_start|> of a user turn
            assert np.array_equal(y[row, :n], tokens[i + 1 : i + 1 + n])
            assert np.array_equal(mask[row, :n], file_mask[i + 1 : i + 1 + n] == 1)
            assert not mask[row, n:].any()  # padding past the end of the file is never trained


def test_padding_only_past_the_end_and_never_trained(sft_data):
    split = open_token_folder(sft_data).split("val")
    last = np.array([split.n_tokens - 5])
    x, y, mask = read_windows(split, last, 16)
    assert np.array_equal(x[0, :4], np.asarray(split.tokens[-5:-1]))
    assert np.array_equal(y[0, :4], np.asarray(split.tokens[-4:]))
    assert not mask[0, 4:].any()


def test_eval_windows_are_fixed_and_tiling_covers_every_target_once(pretrain_data):
    split = open_token_folder(pretrain_data).split("val")
    a, b = eval_starts(split, 32, 4, sft=False), eval_starts(split, 32, 4, sft=False)
    assert np.array_equal(a, b) and len(a) == 4 and a[-1] + 33 <= split.n_tokens
    starts = tiling_starts(split, 32)
    _, y, mask = read_windows(split, starts, 32)
    assert mask.sum() == split.n_tokens - 1
    assert np.array_equal(y[mask], np.asarray(split.tokens[1:], dtype=np.int64))


def test_a_split_without_user_turns_is_refused(tmp_path):
    from prep.tokenfile import TokenFolderWriter
    from prep.tokenizer import load_tokenizer

    with TokenFolderWriter(tmp_path / "d", "pretrain", load_tokenizer("bytes").identity()) as w:
        w.add("train", [1])
        w.add("val", [1, 2, 3])
        w.finish()
    with pytest.raises(ValueError, match="at least 2"):
        BlockSampler(open_token_folder(tmp_path / "d").split("train"), 8, 2, 0, sft=False)
