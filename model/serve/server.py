"""``python -m model serve``: an OpenAI-compatible HTTP API and a chat page over our generation engine.

    GET  /                      the chat page (model/serve/static/chat.html: one file, no build step, no CDN)
    GET  /v1/models             the one model served, named after its run folder
    POST /v1/chat/completions   ChatML from `prep.chat_template`, oldest turns dropped to fit the context
    POST /v1/completions        raw text, for base models; a long prompt keeps its end

FastAPI parses and checks the requests (`model.serve.api`), a `Scheduler` (`model.serve.batching`) decodes all of
them together on one worker thread, and `model.serve.replies` turns its tokens into text deltas. Streams are
server-sent events in OpenAI's format. Errors use OpenAI's ``{"error": {...}}`` shape (`model.serve.http`):
400 names the parameter, 401 (with an API key set), 404, 413 (body over the limit), 503 with Retry-After
(queue full). Work that grows with a request (rendering, tokenizing) runs off the event loop.

Safe by default: it binds 127.0.0.1 unless told otherwise, an API key can be required, bodies and
``max_tokens`` are capped, and no request names a file. When a prompt had to be cut to fit the
context, the response says so in headers: ``X-Context-Dropped-Turns`` (chat: whole oldest turns left
out) and ``X-Context-Truncated: true`` (only the end of a prompt was kept).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import socket
import threading
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from common.errors import UserError
from model.io import INFO_NAME, RunFolder, resolve_model_dir
from model.loader import LoadedModel
from model.serve.api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Limits,
    ResponseShape,
    chat_prompt,
    completion_prompt,
    sampling_params,
    usage,
)
from model.serve.batching import QueueFull, Scheduler, SchedulerClosed
from model.serve.http import BodyLimit, install_error_handlers
from model.serve.replies import GenerationFailed, ReplyStream

PAGE = Path(__file__).resolve().parent / "static" / "chat.html"
RETRY_AFTER_S = 2  # what a client told "queue full" should wait before trying again
# On a CPU, idle rows of a forward pass cost real arithmetic: passes of 4 rows (see model.serve.batching).
CPU_GROUP_SIZE = 4


class ServeError(UserError):
    """The server cannot start (e.g. the port is taken)."""


@dataclass
class ServeOptions:
    model_name: str
    created: int = 0  # when the checkpoint was written (unix time), for /v1/models
    api_key: str | None = None
    max_batch: int = 8  # rows decoded together
    max_queue: int = 32  # requests waiting for a row before new ones get 503
    max_body_bytes: int = 1 << 20
    max_tokens: int = 2048  # the most new tokens one choice may ask for
    group_size: int | None = None  # rows per forward pass (None: 4 on a CPU, max_batch elsewhere)
    threads: int | None = None  # CPU threads for the model (None: all cores but one, left for HTTP)
    allow_origins: list[str] = field(default_factory=list)  # CORS, for browser front-ends on other origins

    @property
    def limits(self) -> Limits:
        return Limits(max_tokens=self.max_tokens, max_samples=self.max_batch)


def create_app(loaded: LoadedModel, options: ServeOptions) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops the engine's worker thread."""
    on_cpu = loaded.engine.device.type == "cpu"
    group_size = options.group_size or (CPU_GROUP_SIZE if on_cpu else options.max_batch)
    # On a CPU the model's threads leave one core to the HTTP side. When the two fight over every core,
    # each parallel section of the model waits for a descheduled thread and a step of a small model
    # takes tens of milliseconds instead of one (measured on 2 cores).
    threads = options.threads or (max(1, torch.get_num_threads() - 1) if on_cpu else None)
    scheduler = Scheduler(loaded.engine, options.max_batch, options.max_queue, group_size, threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.close()

    app = FastAPI(title="zh-mini-llm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler = scheduler
    app.state.requests_served = 0
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    if options.allow_origins:
        # Any request header: the official openai JavaScript client sends its own (x-stainless-os,
        # x-stainless-retry-count, openai-organization, ...), and a preflight naming one header not
        # on a list fails the browser's call. Safe: the API key travels in Authorization, not cookies.
        app.add_middleware(CORSMiddleware, allow_origins=options.allow_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Context-Dropped-Turns", "X-Context-Truncated"])
    auth = [Depends(api_key_check(options.api_key))]
    ctx = ServeContext(loaded, options, scheduler, app)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text("utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        running, waiting = scheduler.load
        return {"status": "ok", "running": running, "waiting": waiting, "steps": scheduler.steps,
                "peak_running": scheduler.peak_running}

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [ctx.model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def model(model_id: str):
        ctx.check_model(model_id)
        return ctx.model_card()

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatRequest, request: Request):
        return await ctx.chat(body, request)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request):
        return await ctx.complete(body, request)

    return app


def api_key_check(api_key: str | None):
    """A FastAPI dependency: with a key set, ``Authorization: Bearer <key>`` is required."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)", code="invalid_api_key")

    return check


@dataclass
class ServeContext:
    """What the routes share: the model, the options, the scheduler."""

    loaded: LoadedModel
    options: ServeOptions
    scheduler: Scheduler
    app: FastAPI

    def model_card(self) -> dict:
        return {"id": self.options.model_name, "object": "model", "created": self.options.created,
                "owned_by": "zh-mini-llm"}

    def check_model(self, name: str) -> None:
        if name != self.options.model_name:
            raise ApiError(404, f"model {name!r} does not exist; this server serves {self.options.model_name!r}",
                           "model", code="model_not_found")

    async def chat(self, body: ChatRequest, request: Request):
        self.check_model(body.model)
        params = sampling_params(body, self.options.limits, body.max_completion_tokens or body.max_tokens)
        block = self.loaded.engine.block_size
        # Rendering and tokenizing grow with the request: done on a worker thread, so that /health, every
        # stream and a shutdown never wait for them.
        fitted = await run_in_threadpool(chat_prompt, body.messages, self.loaded.tokenizer, block,
                                         params.max_new_tokens)
        headers = context_headers(fitted.dropped_turns, fitted.overflow)
        shape = ResponseShape.for_request(True, self.options.model_name)
        return await self.respond(shape, [fitted.ids], params, body, request, headers)

    async def complete(self, body: CompletionRequest, request: Request):
        self.check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt is an empty list", "prompt")
        params = sampling_params(body, self.options.limits, body.max_tokens, len(prompts))
        block, tok = self.loaded.engine.block_size, self.loaded.tokenizer
        fitted = await run_in_threadpool(lambda: [completion_prompt(p, tok, block, params.max_new_tokens)
                                                  for p in prompts])
        headers = context_headers(0, any(cut for _, cut in fitted))
        shape = ResponseShape.for_request(False, self.options.model_name)
        echoes = [p for p in prompts for _ in range(body.n)] if body.echo else None
        return await self.respond(shape, [ids for ids, _ in fitted], params, body, request, headers, echoes)

    async def respond(self, shape: ResponseShape, prompts: list[list[int]], params, body, request: Request,
                      headers: dict[str, str], echoes: list[str] | None = None):
        try:
            reply = ReplyStream(self.scheduler, prompts, params, self.loaded.tokenizer, body.stops())
        except QueueFull:
            raise ApiError(503, "the server is busy: too many requests are waiting; try again shortly",
                           kind="server_error", code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except SchedulerClosed:
            raise ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down") from None
        except ValueError as e:  # a prompt the engine refuses
            raise ApiError(400, str(e), "messages" if shape.chat else "prompt") from None
        self.app.state.requests_served += 1
        if body.stream:
            events = sse_events(shape, reply, len(prompts) * params.num_samples, body.include_usage, echoes)
            return EventStream(events, media_type="text/event-stream", headers=headers)
        texts, finishes = await collect(reply, len(prompts) * params.num_samples, request)
        if echoes:
            texts = [e + t for e, t in zip(echoes, texts, strict=True)]
        return JSONResponse(shape.response(texts, finishes, usage(reply.prompt_tokens, reply.completion_tokens)),
                            headers=headers)


def context_headers(dropped_turns: int, truncated: bool) -> dict[str, str]:
    headers = {"X-Context-Dropped-Turns": str(dropped_turns)} if dropped_turns else {}
    if truncated:
        headers["X-Context-Truncated"] = "true"
    return headers


async def collect(reply: ReplyStream, n_choices: int, request: Request) -> tuple[list[str], list[str]]:
    """Every choice's whole text and finish reason; gives up (and frees the rows) if the client leaves."""
    texts, finishes = [""] * n_choices, ["length"] * n_choices

    async def consume():
        async for delta in reply.deltas():
            texts[delta.index] += delta.text
            if delta.finish:
                finishes[delta.index] = delta.finish

    task = asyncio.ensure_future(consume())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                task.cancel()
        await task
    except GenerationFailed as e:
        raise ApiError(503, str(e), kind="server_error", code=e.code) from None
    finally:
        reply.cancel()
    return texts, finishes


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def sse_events(shape: ResponseShape, reply: ReplyStream, n_choices: int, include_usage: bool,
                     echoes: list[str] | None):
    """The event stream: (chat) a role chunk per choice, text deltas, a finish chunk per choice,
    (if asked) a usage chunk, then ``[DONE]``."""
    try:
        for i in range(n_choices):
            if shape.chat:
                yield sse(shape.chunk(i, None, role=True, usage_field=include_usage))
            elif echoes:
                yield sse(shape.chunk(i, echoes[i], usage_field=include_usage))
        async for delta in reply.deltas():
            if delta.text:
                yield sse(shape.chunk(delta.index, delta.text, usage_field=include_usage))
            if delta.finish:
                yield sse(shape.chunk(delta.index, None, delta.finish, usage_field=include_usage))
        if include_usage:
            yield sse(shape.usage_chunk(usage(reply.prompt_tokens, reply.completion_tokens)))
    except GenerationFailed as e:
        yield sse(ApiError(503, str(e), kind="server_error", code=e.code).body())
    finally:
        reply.cancel()
    yield sse("[DONE]")


class EventStream(StreamingResponse):
    """A streaming response that always closes its generator, so a client that leaves frees its rows."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


class Server(uvicorn.Server):
    """uvicorn, plus: Ctrl-C, SIGTERM and SIGHUP (uvicorn itself catches only the first two) end the
    generations in flight, so that their streams close at once with an error chunk saying the server is
    shutting down and ``[DONE]``, instead of holding the shutdown until they are done."""

    def __init__(self, app: FastAPI, log_level: str = "warning"):
        super().__init__(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10))
        self.scheduler: Scheduler = app.state.scheduler

    @contextmanager
    def capture_signals(self):
        with super().capture_signals():  # on leaving, it raises the caught signals again, for the caller
            if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
                yield
                return
            previous = signal.signal(signal.SIGHUP, self.handle_exit)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)

    def handle_exit(self, sig, frame) -> None:
        self.scheduler.close(wait=False)
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); `ServeError` if the address cannot be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port/PORT") from None


def urls(sock: socket.socket) -> tuple[str, str]:
    """The page's and the API's URLs for a bound socket (a wildcard address shown as localhost)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/", f"http://{shown}:{port}/v1"


def run_identity(ckpt: str | Path) -> tuple[str, int]:
    """The served model's name (its run folder's name) and when its checkpoint was written."""
    folder = resolve_model_dir(ckpt)
    return RunFolder.of(folder).path.resolve().name, int((folder / INFO_NAME).stat().st_mtime)


def serve_forever(app: FastAPI, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve on `sock` until Ctrl-C (or SIGTERM); streams in flight end properly first."""
    server = Server(app, log_level)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the signal once it has shut down cleanly
        pass
    finally:
        sock.close()
