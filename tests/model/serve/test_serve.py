"""The OpenAI-compatible server, started for real on a free local port and called with the official
`openai` client: model listing, chat (streamed and not), completions, concurrency, context fitting."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import openai
import pytest

from model.sampling import SamplingParams
from prep.chat_template import render_prompt
from tests.model.conftest import save_tiny
from tests.model.serve.servers import running_server

MESSAGES = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "数学是什么？"}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("serve")
    return {"chat": save_tiny(tmp / "chat", "sft", block_size=256),
            "base": save_tiny(tmp / "base", "pretrain", block_size=64, seed=1)}


@pytest.fixture(scope="module")
def chat_server(runs):
    with running_server(runs["chat"], max_batch=4) as s:
        yield s


@pytest.fixture(scope="module")
def base_server(runs):
    with running_server(runs["base"], max_batch=4) as s:
        yield s


def client(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=60, **kw)


def engine_text(server, ids: list[int], **params) -> tuple[list[str], list[str]]:
    """What the engine alone makes of `ids`: each sample's text and finish reason."""
    completions = server.loaded.engine.generate(ids, SamplingParams(**params))
    return [server.loaded.tokenizer.decode(c.tokens) for c in completions], [c.finish_reason for c in completions]


def chat_ids(server, messages) -> list[int]:
    return render_prompt(messages, server.loaded.tokenizer)


def test_models_lists_the_run(chat_server):
    models = client(chat_server).models.list().data
    assert [m.id for m in models] == ["chat"] and models[0].owned_by == "zh-mini-llm" and models[0].created > 0
    assert client(chat_server).models.retrieve("chat").id == "chat"


def test_chat_greedy_is_the_engines_reply(chat_server):
    r = client(chat_server).chat.completions.create(model="chat", messages=MESSAGES, temperature=0, max_tokens=20)
    texts, finishes = engine_text(chat_server, chat_ids(chat_server, MESSAGES), max_new_tokens=20, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == texts[0] and r.choices[0].finish_reason == finishes[0]
    assert r.usage.prompt_tokens == len(chat_ids(chat_server, MESSAGES))
    assert 0 < r.usage.completion_tokens <= 20 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_the_whole_reply(chat_server):
    c = client(chat_server)
    kw = dict(model="chat", messages=MESSAGES, temperature=0.9, top_p=0.9, seed=11, max_tokens=30)
    whole = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    texts, _ = engine_text(chat_server, chat_ids(chat_server, MESSAGES), max_new_tokens=30, temperature=0.9,
                           top_p=0.9, seed=11)
    assert text == texts[0]  # the seed gives make sample's text


def test_raw_stream_ends_with_done(chat_server):
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", chat_server.api + "/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_n_samples_and_top_k_repetition_penalty(chat_server):
    r = client(chat_server).chat.completions.create(
        model="chat", messages=MESSAGES, n=3, seed=5, max_tokens=12, temperature=1.0,
        extra_body={"top_k": 20, "repetition_penalty": 1.3})
    texts, finishes = engine_text(chat_server, chat_ids(chat_server, MESSAGES), max_new_tokens=12, temperature=1.0,
                                  top_k=20, repetition_penalty=1.3, seed=5, num_samples=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == texts and [c.finish_reason for c in r.choices] == finishes
    assert len(set(texts)) > 1


def test_stop_strings_cut_the_text(chat_server):
    c = client(chat_server)
    full = c.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, max_tokens=30)
    text = full.choices[0].message.content
    stop = text[4:6]
    assert len(text) > 8 and stop
    for stream in (False, True):
        r = c.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, max_tokens=30,
                                      stop=[stop, "never-seen"], stream=stream)
        if stream:
            chunks = list(r)
            got = "".join(ch.choices[0].delta.content or "" for ch in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            got, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert got == text[: text.index(stop)] and finish == "stop"


def test_completions_on_a_base_model(base_server):
    c = client(base_server)
    r = c.completions.create(model="base", prompt="数学是", temperature=0, max_tokens=15)
    texts, finishes = engine_text(base_server, base_server.loaded.tokenizer.encode("数学是"), max_new_tokens=15,
                                  temperature=0)
    assert r.choices[0].text == texts[0] and r.choices[0].finish_reason == finishes[0]
    assert r.usage.prompt_tokens == len("数学是".encode())
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="base", prompt="数学是", temperature=0, max_tokens=15, stream=True))
    assert streamed == texts[0]
    echoed = c.completions.create(model="base", prompt=["数学是", "物理"], temperature=0, max_tokens=15, echo=True)
    assert [ch.index for ch in echoed.choices] == [0, 1]
    assert echoed.choices[0].text == "数学是" + texts[0] and echoed.choices[1].text.startswith("物理")


def test_long_chat_drops_oldest_turns_and_says_so(chat_server):
    long_turns = [m for i in range(6) for m in ({"role": "user", "content": f"问题{i}" * 10},
                                                {"role": "assistant", "content": "回答" * 10})]
    messages = [MESSAGES[0], *long_turns, {"role": "user", "content": "最后"}]
    raw = client(chat_server).chat.completions.with_raw_response.create(
        model="chat", messages=messages, temperature=0, max_tokens=8)
    dropped = int(raw.headers["x-context-dropped-turns"])
    assert 0 < dropped < 6
    kept = [MESSAGES[0], *long_turns[2 * dropped:], messages[-1]]
    assert len(chat_ids(chat_server, kept)) <= 256 - 8
    texts, _ = engine_text(chat_server, chat_ids(chat_server, kept), max_new_tokens=8, temperature=0)
    assert raw.parse().choices[0].message.content == texts[0]


def test_long_completion_prompt_keeps_its_end(base_server):
    prompt = "很长的提示。" * 30
    raw = client(base_server).completions.with_raw_response.create(model="base", prompt=prompt, temperature=0,
                                                                   max_tokens=10)
    assert raw.headers["x-context-truncated"] == "true"
    ids = base_server.loaded.tokenizer.encode(prompt)[-(64 - 10):]
    texts, _ = engine_text(base_server, ids, max_new_tokens=10, temperature=0)
    assert raw.parse().choices[0].text == texts[0]


def test_four_concurrent_streams_get_the_text_they_get_alone(chat_server):
    """Greedy and seeded sampling, different prompts and lengths, all decoded in one batch."""
    c = client(chat_server)
    jobs = [dict(messages=[{"role": "user", "content": q}], max_tokens=m, temperature=t, seed=s)
            for q, m, t, s in [("你好", 40, 0, 0), ("数学是什么？", 25, 0.8, 1), ("讲个故事", 60, 1.0, 2),
                               ("hi", 33, 0.7, 3)]]

    def run(job) -> str:
        return "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(model="chat", stream=True, **job))

    alone = [run(job) for job in jobs]
    together: list[str | None] = [None] * len(jobs)
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(jobs[i]))) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    for job, text in zip(jobs, alone, strict=True):
        ids = chat_ids(chat_server, job["messages"])
        texts, _ = engine_text(chat_server, ids, max_new_tokens=job["max_tokens"], temperature=job["temperature"],
                               seed=job["seed"])
        assert text == texts[0]
    assert httpx.get(chat_server.url + "/health").json()["peak_running"] >= 2  # they really were batched
