"""Continuous batching: rows of different lengths in one cache, the scheduler's exactness under load,
its queue, cancelling and closing; stop strings and whole characters in streamed text."""

from __future__ import annotations

import queue

import pytest
import torch

from model.generate import Engine
from model.sampling import SamplingParams
from model.serve.batching import Failed, Finished, QueueFull, Scheduler, SchedulerClosed, Tokens
from model.serve.replies import StopText
from tests.model.conftest import favour, tiny_model, tiny_qwen3

EOT, IM_END = 256, 258
N_VOCAB = 259


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(tiny_model(block_size=32), N_VOCAB, [EOT])


def test_rows_of_different_lengths_match_each_row_alone():
    model = tiny_model(block_size=32)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41], [90, 91, 92, 93]]
    rows = model.new_cache()
    with torch.no_grad():
        expected, alone_caches = [], []
        for p in prompts:  # each prompt alone, then its cache copied into its row
            alone = model.new_cache()
            expected.append(model(torch.tensor([p]), cache=alone)[0, -1])
            alone_caches.append(alone)
        for i in range(len(model.transformer.h)):
            rows.k[i] = torch.zeros(len(prompts), *alone_caches[0].k[i].shape[1:])
            rows.v[i] = torch.zeros_like(rows.k[i])
            for r, alone in enumerate(alone_caches):
                rows.k[i][r, :, : len(prompts[r])] = alone.k[i][0, :, : len(prompts[r])]
                rows.v[i][r, :, : len(prompts[r])] = alone.v[i][0, :, : len(prompts[r])]
        nxt = [int(e.argmax()) for e in expected]
        batched = model(torch.tensor(nxt)[:, None], cache=rows, start_pos=[len(p) for p in prompts])[:, -1]
        for r, p in enumerate(prompts):
            single = model(torch.tensor([p + [nxt[r]]]))[0, -1]  # no cache at all
            torch.testing.assert_close(batched[r], single, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="need a cache"):
        model(torch.tensor([[1]]), start_pos=[3])
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.tensor([[1], [2]]), cache=rows, start_pos=[3, 32])


def collect(q: queue.Queue) -> tuple[list[list[int]], object]:
    """A request's tokens per sample and its last event."""
    steps = []
    while True:
        event = q.get(timeout=60)
        if not isinstance(event, Tokens):
            rows = list(zip(*steps, strict=True)) if steps else []
            return [[t for t in row if t is not None] for row in rows], event
        steps.append(event.tokens)


JOBS = [  # greedy and sampled, one with 2 samples, a repetition penalty, and contexts that slide (block 32)
    ([1, 2, 3], SamplingParams(max_new_tokens=60, temperature=1.0, top_k=0, seed=5)),
    ([7] * 10, SamplingParams(max_new_tokens=45, temperature=0)),
    (list(range(40, 70)), SamplingParams(max_new_tokens=50, temperature=0.9, top_p=0.8, seed=2, num_samples=2)),
    ([9, 8], SamplingParams(max_new_tokens=20, temperature=0, repetition_penalty=1.3)),
]


@pytest.fixture(params=["gpt2", "qwen3"])
def any_engine(request, engine) -> Engine:
    """The scheduler's exactness for each architecture (qwen3: GQA cache, rotary positions per row)."""
    return engine if request.param == "gpt2" else Engine(tiny_qwen3(block_size=32), N_VOCAB, [EOT])


def test_same_tokens_alone_under_load_and_from_the_engine(any_engine):
    engine = any_engine
    scheduler = Scheduler(engine, max_batch=6, group_size=4, threads=1)  # 2 groups: 8 slots
    scheduler.start()
    try:
        alone = []
        for prompt, params in JOBS:
            q = queue.Queue()
            scheduler.submit(prompt, params, q.put)
            alone.append(collect(q))
        queues = [queue.Queue() for _ in JOBS]
        for (prompt, params), q in zip(JOBS, queues, strict=True):
            scheduler.submit(prompt, params, q.put)
        together = [collect(q) for q in queues]
    finally:
        scheduler.close()
    assert scheduler.peak_running == len(JOBS) and scheduler.max_batch == 8
    assert together == alone  # 5 rows over 2 groups under load, group 0 alone
    for (prompt, params), (tokens, end) in zip(JOBS, alone, strict=True):
        reference = engine.generate(prompt, params)
        assert tokens == [c.tokens for c in reference]
        assert end == Finished([c.finish_reason for c in reference], [c.stop_token for c in reference])


def test_a_request_joining_midway_gets_its_own_tokens(engine):
    """B arrives while A is 5 tokens in: both are decoded together from then on, each as if alone."""
    (pa, params_a), (pb, params_b) = JOBS[0], JOBS[1]
    scheduler = Scheduler(engine, max_batch=2, threads=1)
    scheduler.start()
    qa, qb = queue.Queue(), queue.Queue()
    seen = []

    def listen_a(event):
        seen.append(event)
        if len(seen) == 5:
            scheduler.submit(pb, params_b, qb.put)
        qa.put(event)

    try:
        scheduler.submit(pa, params_a, listen_a)
        a, b = collect(qa), collect(qb)
    finally:
        scheduler.close()
    assert scheduler.peak_running == 2
    assert a[0] == [engine.generate(pa, params_a)[0].tokens]
    assert b[0] == [engine.generate(pb, params_b)[0].tokens]


def test_queue_cancel_and_close():
    engine = Engine(favour(tiny_model(block_size=32), [97]), N_VOCAB, [EOT])  # never stops by itself
    scheduler = Scheduler(engine, max_batch=1, max_queue=2)
    long = SamplingParams(max_new_tokens=100_000, temperature=0)
    with pytest.raises(ValueError, match="at most 1 samples"):
        scheduler.submit([1], SamplingParams(num_samples=2), print)
    with pytest.raises(ValueError, match="prompt"):
        scheduler.submit([], long, print)
    first, second = queue.Queue(), queue.Queue()
    running = scheduler.submit([1], long, first.put)
    scheduler.submit([2], long, second.put)
    third = scheduler.submit([5], long, print)  # not started yet: its row (1) and the queue (2) are full
    with pytest.raises(QueueFull):
        scheduler.submit([3], long, print)
    scheduler.start()
    assert isinstance(first.get(timeout=60), Tokens)
    third.cancel()
    running.cancel()  # its row goes to the waiting request
    assert isinstance(second.get(timeout=60), Tokens)
    scheduler.close()
    with pytest.raises(SchedulerClosed):
        scheduler.submit([4], long, print)
    assert drain(second)[-1] == Failed("the server is shutting down", "shutting_down")  # cut short, and says so
    assert scheduler.load == (0, 0) and scheduler.steps < 100_000


def drain(q: queue.Queue) -> list:
    items = []
    while not q.empty():
        items.append(q.get())
    return items


def test_close_fails_waiting_requests():
    engine = Engine(tiny_model(block_size=32), N_VOCAB, [EOT])
    scheduler = Scheduler(engine, max_batch=1)
    q = queue.Queue()
    scheduler.submit([1, 2], SamplingParams(max_new_tokens=5), q.put)  # the worker never started
    scheduler.close()
    assert isinstance(q.get(timeout=5), Failed)


def test_stop_text_holds_back_a_possible_stop_and_never_splits_a_character(byte_tokenizer):
    text = StopText(byte_tokenizer, ["学。", "END"])
    pieces = [text.push(b) for b in "数学很好E".encode()]
    assert pieces[:3] == ["", "", "数"]  # 3 bytes make one character
    assert "".join(pieces) == "数学很好" and text.held == "E"  # "E" may begin "END"
    assert text.push(ord("N")) == "" and text.push(ord("x")) == "ENx"
    assert text.flush() == "" and not text.stopped

    text = StopText(byte_tokenizer, ["学。"])
    out = "".join(text.push(b) for b in "数学。后面".encode())
    assert out == "数" and text.stopped and text.tokens == len("数学。".encode())
    assert text.push(ord("a")) == "" and text.flush() == ""


def test_a_failing_step_fails_its_requests_not_the_scheduler(engine, monkeypatch):
    scheduler = Scheduler(engine, max_batch=2, threads=1)
    scheduler.start()
    try:
        with monkeypatch.context() as m:
            m.setattr(scheduler, "_decode", lambda: (_ for _ in ()).throw(RuntimeError("out of memory")))
            q = queue.Queue()
            scheduler.submit([1, 2], SamplingParams(max_new_tokens=10), q.put)
            _, end = collect(q)
        assert end == Failed("generation failed: RuntimeError: out of memory") and scheduler.load == (0, 0)
        q = queue.Queue()
        scheduler.submit([1, 2], SamplingParams(max_new_tokens=10, temperature=0), q.put)
        assert collect(q)[0] == [engine.generate([1, 2], SamplingParams(max_new_tokens=10, temperature=0))[0].tokens]
    finally:
        scheduler.close()


def test_a_request_that_breaks_its_own_step_fails_alone(engine):
    """A value that slipped past the checks (a NaN temperature makes its sampling raise) fails its own
    request; the request decoded beside it gets exactly the tokens it gets alone."""
    broken = SamplingParams(max_new_tokens=10, seed=3)
    broken.temperature = float("nan")  # past __post_init__, as a bug elsewhere might let it through
    good = SamplingParams(max_new_tokens=20, temperature=0)
    scheduler = Scheduler(engine, max_batch=2, threads=1)
    qa, qb = queue.Queue(), queue.Queue()
    scheduler.submit([1, 2], good, qa.put)
    scheduler.submit([3, 4], broken, qb.put)
    scheduler.start()  # both admitted in the same step
    try:
        (tokens, end), (_, failed) = collect(qa), collect(qb)
    finally:
        scheduler.close()
    assert isinstance(failed, Failed) and "RuntimeError" in failed.message
    assert tokens == [engine.generate([1, 2], good)[0].tokens] and isinstance(end, Finished)


@pytest.mark.parametrize("field, value", [("temperature", float("nan")), ("temperature", float("inf")),
                                          ("temperature", 1e6), ("repetition_penalty", float("inf")),
                                          ("repetition_penalty", 1e30), ("repetition_penalty", 1e-30),
                                          ("top_p", float("nan")), ("max_new_tokens", 10**12),
                                          ("num_samples", 10**9)])
def test_sampling_values_outside_their_working_range_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_admission_counts_free_rows_before_the_queue():
    """An idle server takes a burst of rows + queue; with no queue at all it still serves while a row is free."""
    engine = Engine(favour(tiny_model(block_size=32), [97]), N_VOCAB, [EOT])
    long = SamplingParams(max_new_tokens=100_000, temperature=0)
    for max_queue in (0, 2):
        scheduler = Scheduler(engine, max_batch=2, max_queue=max_queue)  # not started: nothing leaves the line
        for _ in range(2 + max_queue):
            scheduler.submit([1], long, print)
        with pytest.raises(QueueFull):
            scheduler.submit([1], long, print)
        scheduler.close()
    scheduler = Scheduler(engine, max_batch=2, max_queue=0)
    scheduler.start()
    try:
        q = queue.Queue()
        first = scheduler.submit([1], long, q.put)
        assert isinstance(q.get(timeout=60), Tokens)
        scheduler.submit([2], SamplingParams(max_new_tokens=3), print)  # the second row is free
        with pytest.raises(QueueFull):
            scheduler.submit([3], long, print)  # both rows taken, no queue
        first.cancel()
    finally:
        scheduler.close()
