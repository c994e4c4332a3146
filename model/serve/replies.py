"""From the scheduler's token events to the text of each choice, as asyncio sees it.

`StopText` turns one choice's tokens into text pieces that never split a character (`TextStream`)
and ends the text at the first stop string; text that might be the start of a stop string is held
back until it is clear, so a stop string is never half sent.

`ReplyStream` submits one request per prompt to the `Scheduler` and yields `Delta`s (choice, text,
finish) in the order they are made. Leaving it early (the client went away) cancels the requests,
which frees their rows at the engine's next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from model.generate import TextStream
from model.sampling import SamplingParams
from model.serve.batching import Failed, Finished, Request, Scheduler, Tokens


class GenerationFailed(Exception):
    """The engine could not finish a request (it raised: `code` generation_failed; or the server is
    stopping: shutting_down)."""

    def __init__(self, message: str, code: str = "generation_failed"):
        super().__init__(message)
        self.code = code


class StopText:
    """One choice's text as it is generated, cut at the first of `stops`."""

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.stream = TextStream(tokenizer)
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False  # a stop string was found
        self.tokens = 0  # tokens taken before the text ended

    def push(self, token: int) -> str:
        """The text that is now safe to send (maybe "")."""
        if self.stopped:
            return ""
        self.tokens += 1
        return self._release(self.held + self.stream.push(token), final=False)

    def flush(self) -> str:
        """The rest, at the end of generation."""
        return "" if self.stopped else self._release(self.held + self.stream.flush(), final=True)

    def _release(self, text: str, final: bool) -> str:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[: min(hits)]
        keep = 0 if final else max((self._partial_stop(text, s) for s in self.stops), default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    @staticmethod
    def _partial_stop(text: str, stop: str) -> int:
        """Length of the longest end of `text` that begins `stop`."""
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                return k
        return 0


@dataclass
class Delta:
    """A piece of choice `index`: new `text`, and `finish` ("stop" or "length") on its last piece."""

    index: int
    text: str
    finish: str | None = None


class ReplyStream:
    """The choices of one API request: one scheduler request per prompt, submitted at once (so a full
    queue is known before any response starts). Prompt k's sample j is choice ``k * n + j``.

    Raises what `Scheduler.submit` raises; `deltas` raises GenerationFailed if the engine gives up.
    Must be made on the event loop's thread.
    """

    def __init__(self, scheduler: Scheduler, prompts: list[list[int]], params: SamplingParams, tokenizer,
                 stops: Sequence[str] = ()):
        self.n = params.num_samples
        self.texts = [StopText(tokenizer, stops) for _ in range(len(prompts) * self.n)]
        self.events: asyncio.Queue = asyncio.Queue()
        self.requests: list[Request] = []
        loop = asyncio.get_running_loop()
        try:
            for k, ids in enumerate(prompts):
                def listener(event, k=k):
                    loop.call_soon_threadsafe(self.events.put_nowait, (k, event))
                self.requests.append(scheduler.submit(ids, params, listener))
        except Exception:
            self.cancel()
            raise
        self.prompt_tokens = sum(r.prompt_tokens for r in self.requests)

    @property
    def completion_tokens(self) -> int:
        return sum(t.tokens for t in self.texts)

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    async def deltas(self) -> AsyncIterator[Delta]:
        """Every choice's text pieces as they come; each choice ends with a Delta carrying its finish."""
        open_requests = set(range(len(self.requests)))
        try:
            while open_requests:
                k, event = await self.events.get()
                if k not in open_requests:
                    continue
                if isinstance(event, Failed):
                    raise GenerationFailed(event.message, event.code)
                choices = range(k * self.n, (k + 1) * self.n)
                if isinstance(event, Tokens):
                    for delta in self._tokens(choices, event.tokens):
                        yield delta
                    if all(self.texts[i].stopped for i in choices):  # every sample hit a stop string
                        self.requests[k].cancel()
                        open_requests.discard(k)
                elif isinstance(event, Finished):
                    for i, finish in zip(choices, event.finish, strict=True):
                        if not self.texts[i].stopped:
                            yield Delta(i, self.texts[i].flush(), finish)
                    open_requests.discard(k)
        finally:
            self.cancel()

    def _tokens(self, choices: range, tokens: list[int | None]) -> list[Delta]:
        deltas = []
        for i, token in zip(choices, tokens, strict=True):
            text = self.texts[i]
            if token is not None and not text.stopped:
                piece = text.push(token)
                if piece or text.stopped:
                    deltas.append(Delta(i, piece, "stop" if text.stopped else None))
        return deltas
