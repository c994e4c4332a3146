"""The OpenAI API as the server speaks it: request bodies, their checks, prompts, and response objects.

Only what `/v1/chat/completions` and `/v1/completions` need, with OpenAI's names and defaults where
they exist. Unknown fields are ignored (front-ends send many); fields we know but cannot honour
(logprobs, tools, penalties other than ours) are refused with a 400 naming them, never silently
dropped. Our own sampling options ride along as extra fields: `top_k` and `repetition_penalty`.
Omitted sampling fields take `python -m model sample`'s defaults (temperature 0.8, top-k 50); an
omitted `seed` is a fresh random one, so "regenerate" gives a new reply.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.chat import FittedPrompt, fit_turns, reply_reserve
from model.sampling import PENALTY_RANGE, SamplingParams
from prep.chat_template import ChatFormatError, Message

DEFAULTS = SamplingParams()
MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARS = 256  # text that may begin a stop string is held back and re-checked each token: keep it short
# A chat history longer than this is refused (400): no context of ours holds more turns than this, and
# every message costs work to render before any of it can be dropped.
MAX_MESSAGES = 1024


class ApiError(Exception):
    """An error the client caused (or may retry), rendered in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields both endpoints share. Every sampling value is checked to its working range here (a 400
    naming the field): a NaN, an infinity or an extreme penalty that got through would break the
    batched step of every request decoded with it (JSON bodies may carry NaN and Infinity)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | int | None = None
    logit_bias: dict | None = None

    # OpenAI parameters we cannot honour: a request that uses one gets a 400 naming it, never a quiet no-op
    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "presence_penalty": "presence_penalty is not supported; use repetition_penalty (>1 discourages repeats)",
        "frequency_penalty": "frequency_penalty is not supported; use repetition_penalty (>1 discourages repeats)",
        "logprobs": "logprobs are not supported",
        "logit_bias": "logit_bias is not supported",
        "tools": "tools (function calling) are not supported",  # chat
        "response_format": "only the text response_format is supported",  # chat
        "suffix": "suffix (insertion) is not supported",  # completions
        "best_of": "best_of is not supported",  # completions
    }

    def uses(self, name: str) -> bool:
        """Whether the request asks for field `name` (set to anything but its neutral value)."""
        value = getattr(self, name, None)  # a field of the other endpoint is never used
        if name == "response_format":
            return bool(value) and value.get("type", "text") != "text"
        if name == "best_of":
            return value not in (None, 1, self.n)
        return bool(value)

    def refuse_unsupported(self) -> None:
        for name, why in self.UNSUPPORTED.items():
            if self.uses(name):
                raise ApiError(400, why, name)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ApiError(400, f"stop must be up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} "
                                "characters", "stop")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list | None = None
    response_format: dict | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] = ""
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


@dataclass
class Limits:
    """What one request may ask of the server."""

    max_tokens: int = 2048  # per choice
    max_samples: int = 8  # choices per request (n x prompts): the batch size


def sampling_params(req: SamplingRequest, limits: Limits, max_tokens: int | None, n_prompts: int = 1) -> SamplingParams:
    """The engine's `SamplingParams` for a checked request."""
    req.refuse_unsupported()
    name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(400, f"{name} is {max_tokens}; this server allows at most {limits.max_tokens}", name)
    if req.n * n_prompts > limits.max_samples:
        raise ApiError(400, f"at most {limits.max_samples} choices per request (n x prompts)", "n")
    try:
        return SamplingParams(
            max_new_tokens=max_tokens or min(DEFAULTS.max_new_tokens, limits.max_tokens),
            temperature=DEFAULTS.temperature if req.temperature is None else req.temperature,
            top_k=DEFAULTS.top_k if req.top_k is None else req.top_k,
            top_p=1.0 if req.top_p is None else req.top_p,
            repetition_penalty=DEFAULTS.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            seed=secrets.randbits(63) if req.seed is None else req.seed,
            num_samples=req.n,
        )
    except ValueError as e:  # "temperature must be ...": the message starts with the field's name
        raise ApiError(400, str(e), str(e).split(" ", 1)[0]) from None


def message_text(message: ChatMessage, i: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"only text content is supported, not {part.type!r}", f"messages[{i}].content")
        parts.append(part.text)
    return "".join(parts)


def chat_prompt(messages: list[ChatMessage], tokenizer, block_size: int, max_new_tokens: int) -> FittedPrompt:
    """ChatML ids for `messages`, dropping the oldest whole turns (a user message and what follows it)
    to leave room for the reply, as `make chat` does; the system prompt always stays."""
    plain = [("system" if m.role == "developer" else m.role, message_text(m, i)) for i, m in enumerate(messages)]
    head = plain[:1] if plain[0][0] == "system" else []
    turns: list[list[Message]] = []
    for m in plain[len(head):]:
        if m[0] == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    budget = block_size - reply_reserve(block_size, max_new_tokens)
    try:
        return fit_turns(head, turns, tokenizer, budget)
    except ChatFormatError as e:
        raise ApiError(400, str(e), "messages") from None


def completion_prompt(text: str, tokenizer, block_size: int, max_new_tokens: int) -> tuple[list[int], bool]:
    """Ids of a base-model prompt, keeping its end if it leaves no room for the reply; and whether it was cut."""
    ids = tokenizer.encode(text) or [tokenizer.eot_id]  # an empty prompt starts a new document
    budget = block_size - reply_reserve(block_size, max_new_tokens)
    return (ids[-budget:], True) if len(ids) > budget else (ids, False)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class ResponseShape:
    """How one endpoint writes its objects: chat puts text in a message/delta, completions in `text`."""

    chat: bool
    id: str
    model: str
    created: int

    @classmethod
    def for_request(cls, chat: bool, model: str) -> ResponseShape:
        return cls(chat, new_id("chatcmpl" if chat else "cmpl"), model, int(time.time()))

    def _object(self, kind: str, choices: list[dict], extra: dict) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices, **extra}

    def response(self, texts: list[str], finishes: list[str], use: dict) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finishes, strict=True))]
            return self._object("chat.completion", choices, {"usage": use})
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                   for i, (t, f) in enumerate(zip(texts, finishes, strict=True))]
        return self._object("text_completion", choices, {"usage": use})

    def chunk(self, index: int, text: str | None, finish: str | None = None, role: bool = False,
              usage_field: bool = False) -> dict:
        """A streamed piece of choice `index`: its `text`, or (chat) the opening role, or its finish."""
        extra = {"usage": None} if usage_field else {}
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self._object("chat.completion.chunk", [choice], extra)
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._object("text_completion", [choice], extra)

    def usage_chunk(self, use: dict) -> dict:
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [], {"usage": use})
