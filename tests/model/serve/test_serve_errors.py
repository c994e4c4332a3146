"""The server's errors (OpenAI's JSON shape and statuses), its limits, clients that leave, and shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from model.serve.api import MAX_MESSAGES
from tests.conftest import ROOT
from tests.model.conftest import favour, save_tiny, tiny_model
from tests.model.serve.servers import running_server

USER = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A chat model that writes "aaaa..." and never stops by itself: a request lasts its max_tokens."""
    model = favour(tiny_model(block_size=64), [ord("a")])
    return save_tiny(tmp_path_factory.mktemp("serve-errors") / "chat", "sft", model=model)


@pytest.fixture(scope="module")
def server(run):
    with running_server(run, max_batch=2) as s:
        yield s


def post(server, path: str, body, timeout: float | httpx.Timeout = 60) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.api + path, content=data, headers={"Content-Type": "application/json"}, timeout=timeout)


def error(r: httpx.Response) -> dict:
    assert set(r.json()) == {"error"}, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return e


@pytest.mark.parametrize("change, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5000}, "max_tokens"),
    ({"max_completion_tokens": 5000}, "max_completion_tokens"),
    ({"n": 3}, "n"),  # more than the batch of 2
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": "a" * 100_000}, "stop"),  # re-checked at every token on the event loop: quadratic
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [*USER, {"role": "system", "content": "late"}]}, "messages"),
    ({"model": None}, "model"),
    # values that pass a type check but would break the batched step of every request in flight
    ({"repetition_penalty": 1e30}, "repetition_penalty"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty"),  # json.dumps writes Infinity
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": float("nan")}, "top_p"),
])
def test_bad_parameters_get_400_naming_them(server, change, param):
    body = {"model": server.name, "messages": USER, **change}
    r = post(server, "/chat/completions", {k: v for k, v in body.items() if v is not None})
    assert r.status_code == 400, r.text
    assert error(r)["param"] == param and error(r)["type"] == "invalid_request_error"


def test_bad_bodies_get_400(server):
    assert post(server, "/chat/completions", b"{not json").status_code == 400
    assert "JSON" in error(post(server, "/chat/completions", b"{not json"))["message"]
    assert "JSON object" in error(post(server, "/chat/completions", b"[1, 2]"))["message"]
    assert post(server, "/completions", {"model": server.name, "prompt": []}).status_code == 400


def test_a_long_history_is_refused_and_fitting_never_holds_the_event_loop(server, monkeypatch):
    from model.serve import server as module

    r = post(server, "/chat/completions", {"model": server.name, "messages": USER * (MAX_MESSAGES + 1)})
    assert r.status_code == 400 and error(r)["param"] == "messages"
    real, calls = module.chat_prompt, []

    def slow_fit(*args):  # as a long history at the body limit would be
        time.sleep(1.5)
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(module, "chat_prompt", slow_fit)
    body = {"model": server.name, "messages": USER * MAX_MESSAGES, "max_tokens": 1}
    thread = threading.Thread(target=post, args=(server, "/chat/completions", body))
    thread.start()
    try:
        time.sleep(0.3)  # the request is being fitted now
        started = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        assert time.monotonic() - started < 1.0  # answered while the fitting went on
    finally:
        thread.join(60)
    assert len(calls) == 1


def test_unknown_model_and_route_get_404(server):
    c = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=USER)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")
    r = httpx.get(server.api + "/embeddings")
    assert r.status_code == 404 and "/v1/embeddings" in error(r)["message"]
    assert httpx.get(server.url + "/etc/passwd").status_code == 404  # nothing but the page is served from disk


def test_oversized_body_gets_413(run):
    with running_server(run, max_body_bytes=2000) as s:
        big = {"model": s.name, "messages": [{"role": "user", "content": "长" * 1000}]}
        r = post(s, "/chat/completions", big)
        assert r.status_code == 413 and error(r)["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit is checked as the body arrives
            yield json.dumps(big).encode()

        r = httpx.post(s.api + "/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert post(s, "/chat/completions", {"model": s.name, "messages": USER, "max_tokens": 3}).status_code == 200


def test_api_key_is_required_when_set(run):
    with running_server(run, api_key="sesame") as s:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.api, api_key="wrong", max_retries=0).models.list()
        assert httpx.get(s.api + "/models").status_code == 401  # no key at all
        assert error(httpx.get(s.api + "/models"))["code"] == "invalid_api_key"
        ok = openai.OpenAI(base_url=s.api, api_key="sesame", max_retries=0)
        assert ok.chat.completions.create(model=s.name, messages=USER, max_tokens=3).choices
        assert httpx.get(s.url + "/").status_code == 200  # the page itself asks for the key


def test_full_queue_gets_503_with_retry_after(run):
    with running_server(run, max_batch=1, max_queue=1) as s:
        body = {"model": s.name, "messages": USER, "max_tokens": 2048, "stream": True}
        with httpx.stream("POST", s.api + "/chat/completions", json=body, timeout=60):
            wait_for(lambda: httpx.get(s.url + "/health").json()["running"] == 1)  # the one row is taken
            waiting = threading.Thread(target=post, args=(s, "/chat/completions",
                                                          {**body, "stream": False, "max_tokens": 3}))
            waiting.start()
            wait_for(lambda: httpx.get(s.url + "/health").json()["waiting"] == 1)
            r = post(s, "/chat/completions", {**body, "max_tokens": 3})
            assert r.status_code == 503 and r.headers["retry-after"].isdigit()
            assert error(r)["type"] == "server_error"
        waiting.join(60)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_stops_its_generation(run, stream):
    with running_server(run, max_batch=1) as s:
        body = {"model": s.name, "messages": USER, "max_tokens": 2048, "stream": stream}
        if stream:
            with httpx.stream("POST", s.api + "/chat/completions", json=body, timeout=60) as r:
                next(r.iter_lines())
        else:
            with pytest.raises(httpx.ReadTimeout):
                post(s, "/chat/completions", body, timeout=httpx.Timeout(60, read=0.5))
        wait_for(lambda: httpx.get(s.url + "/health").json()["running"] == 0)
        assert httpx.get(s.url + "/health").json()["steps"] < 2000  # freed long before its 2048 tokens


def test_shutdown_ends_streams_in_flight_properly(run):
    with running_server(run, max_batch=1) as s:
        body = {"model": s.name, "messages": USER, "max_tokens": 2048, "stream": True}
        with httpx.stream("POST", s.api + "/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            while '"content":"a"' not in next(lines):  # generating (not waiting: that would be a 503 error)
                pass
            s.server.handle_exit(signal.SIGINT, None)  # what Ctrl-C does
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["error"]["code"] == "shutting_down"  # not a "length" that looks normal


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_cli_serves_until_ctrl_c(run, sig):
    """`python -m model serve` as `make serve` runs it: prints the URLs, answers, stops cleanly on Ctrl-C,
    SIGTERM (a scheduler, `docker stop`) or SIGHUP (a closed terminal)."""
    proc = subprocess.Popen([sys.executable, "-m", "model", "serve", "--ckpt", str(run), "--port", "0"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "API base URL" in line:
                break
        api = lines[-1].split()[3]
        assert api.startswith("http://127.0.0.1:") and api.endswith("/v1")
        assert any("chat page: http://127.0.0.1:" in line for line in lines)
        assert httpx.get(api + "/models").json()["data"][0]["id"] == "chat"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped; 0 requests served" in err and "Traceback" not in err


def test_cli_port_in_use_is_one_line(run):
    with running_server(run) as s:
        port = s.url.rsplit(":", 1)[1]
        r = subprocess.run([sys.executable, "-m", "model", "serve", "--ckpt", str(run), "--port", port],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


# What the official openai JavaScript client (v4/v5, dangerouslyAllowBrowser) names on its preflight.
OPENAI_JS_HEADERS = ("authorization, content-type, openai-organization, openai-project, x-stainless-arch, "
                     "x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, "
                     "x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout")


def test_a_browser_front_end_passes_the_preflight_of_the_openai_js_client(run):
    origin = "http://localhost:3000"
    with running_server(run, allow_origins=[origin]) as s:
        r = httpx.options(s.api + "/chat/completions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": OPENAI_JS_HEADERS})
        assert r.status_code == 200, r.text
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {h.strip() for h in OPENAI_JS_HEADERS.split(",")} <= allowed
        assert r.headers["access-control-allow-origin"] == origin
        reply = post(s, "/chat/completions", {"model": s.name, "messages": USER, "max_tokens": 2})
        assert reply.status_code == 200
        elsewhere = httpx.options(s.api + "/chat/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in elsewhere.headers
