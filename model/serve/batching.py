"""Continuous batching: one worker thread decodes every running request together, a token per step.

A request is a `model.generate.Generation`. Its prompt runs alone (as in `Engine.stream`), then its
keys and values are copied into free rows ("slots") of one shared cache, and from then on every
step feeds the newest token of each running request through the model in a single batch, each row
at its own position (the model's forward with one start per row). Requests join as soon as slots are free
and leave as soon as they end, so a long reply never holds up a short one. When a request's context
is full it slides alone (`Generation.feed`, see `model.generate`) and is copied in again.

Same seed, same text, alone or under load. Each request draws from its own `torch.Generator`, and
a row's arithmetic never depends on what else is running. Matrix kernels pick their blocking, and so
their rounding, by the number of rows, so the slots form fixed groups of `group_size` rows and a
step runs one forward pass per group that has a running request, idle rows included: every pass has
the same shape, whoever is in it. Attention always spans the whole block, later positions masked.
Idle rows cost arithmetic, nothing on a GPU (one group of all slots) but a share on a CPU, hence
groups of 4 there: one to four requests cost one 4-row pass, five to eight two. `max_batch=1` is
plain one-at-a-time serving.

The waiting line is bounded: `submit` raises `QueueFull` instead of letting memory grow. Admission
counts rows: a request is taken when a row is free for it or fewer than `max_queue` requests wait
beyond the free rows, so a burst on an idle server gets up to rows + queue, and ``max_queue=0`` still
serves while a row is free. Rows are handed out under the lock, so the count is never stale.
At `close` every request in flight ends with `Failed` (the server is stopping): a reply cut short is
never dressed up as a normal stop at the length limit.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from model.archs.gpt2 import KVCache
from model.generate import Engine, Generation
from model.sampling import SamplingParams

log = logging.getLogger(__name__)


SHUTTING_DOWN = "the server is shutting down"


class QueueFull(Exception):
    """More requests are waiting than the queue holds; the caller should try again later."""


class SchedulerClosed(Exception):
    """The scheduler is shutting down and takes no new requests."""


@dataclass
class Tokens:
    """One step of a request: every sample's new token, or None for a sample that has ended."""

    tokens: list[int | None]


@dataclass
class Finished:
    """The request ended: per sample "stop" (at `stop_tokens[i]`) or "length"."""

    finish: list[str]
    stop_tokens: list[int | None]


@dataclass
class Failed:
    """The request could not be completed (the server is stopping, or the model raised)."""

    message: str
    code: str = "generation_failed"


Event = Tokens | Finished | Failed


class Request:
    """A submitted generation. Its events go to `listener`, called on the worker thread, in order:
    `Tokens` per step, then one `Finished` or `Failed`. A cancelled request gets no more events."""

    def __init__(self, generation: Generation, listener: Callable[[Event], None]):
        self.generation = generation
        self.listener = listener
        self.cancelled = False
        self.rows: list[int] = []  # its slots in the shared cache, one per sample
        self.index: torch.Tensor | None = None  # the same, as a tensor
        self.logits: torch.Tensor | None = None  # for the next pick

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt)

    @property
    def completion_tokens(self) -> list[int]:
        return list(self.generation.n_new)

    def cancel(self) -> None:
        """Stop generating (the client has gone); its slots are freed at the next step."""
        self.cancelled = True


class Scheduler:
    """Runs `engine` for many requests at once on one worker thread: `start`, `submit` ..., `close`."""

    def __init__(self, engine: Engine, max_batch: int = 8, max_queue: int = 32, group_size: int | None = None,
                 threads: int | None = None):
        """`group_size`: rows per forward pass (default `max_batch`: one pass for all slots); `threads`:
        CPU threads for the worker's arithmetic (None: torch's default)."""
        group_size = group_size or max_batch
        if max_batch < 1 or max_queue < 0 or group_size < 1:
            raise ValueError("max_batch and group_size must be >= 1 and max_queue >= 0")
        self.engine, self.max_queue, self.threads = engine, max_queue, threads
        self.group_size = min(group_size, max_batch)
        n_groups = -(-max_batch // self.group_size)
        self.max_batch = n_groups * self.group_size  # whole groups
        self.groups: list[KVCache] = [engine.model.new_cache() for _ in range(n_groups)]  # buffers: at first use
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free = list(range(self.max_batch))  # the lowest first, so requests pack into few groups
        self.cond = threading.Condition()
        self.closing = False
        self.steps = 0  # decode steps run so far
        self.peak_running = 0  # the most requests ever decoded together
        self.thread = threading.Thread(target=self._loop, name="engine-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, prompt: Sequence[int], params: SamplingParams, listener: Callable[[Event], None]) -> Request:
        """Queue a generation; raises ValueError (bad prompt or too many samples), QueueFull or SchedulerClosed."""
        if params.num_samples > self.max_batch:
            raise ValueError(f"at most {self.max_batch} samples per request (the batch size)")
        request = Request(self.engine.stream(prompt, params), listener)
        with self.cond:
            if self.closing:
                raise SchedulerClosed(SHUTTING_DOWN)
            if not self._has_room(params.num_samples):
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(request)
            self.cond.notify()
        return request

    def _has_room(self, rows: int) -> bool:
        """(Called locked.) Whether a request of `rows` samples may join: the waiting requests take the
        free rows first come first served; after that, it must fit the rows left or the queue."""
        free, queued = len(self.free), 0
        for request in self.waiting:
            if request.cancelled:
                continue
            n = request.generation.params.num_samples
            if queued == 0 and n <= free:
                free -= n
            else:
                queued += 1
        return (queued == 0 and rows <= free) or queued < self.max_queue

    def close(self, wait: bool = True) -> None:
        """Stop: running and waiting requests fail ("the server is shutting down"), the worker exits."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        if self.thread.ident is None:  # never started: nobody else will tell the waiting requests
            self._drain()
        elif wait:
            self.thread.join()

    @property
    def load(self) -> tuple[int, int]:
        """(requests running, requests waiting)."""
        return len(self.running), len(self.waiting)

    def _loop(self) -> None:
        previous = torch.get_num_threads()  # a process-wide setting: restored when the worker ends
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            while True:
                with self.cond:
                    while not (self.waiting or self.running or self.closing):
                        self.cond.wait()
                    if self.closing:
                        break
                    admitted = self._take_waiting()
                try:
                    self._step(admitted)
                except Exception as e:  # a failing step fails the requests in it, not the server
                    log.exception("generation step failed")
                    for request in self.running + [r for r in admitted if r not in self.running]:
                        self._retire(request, Failed(f"generation failed: {type(e).__name__}: {e}"))
            self._drain()
        finally:
            torch.set_num_threads(previous)

    def _take_waiting(self) -> list[Request]:
        """The waiting requests that fit the free slots, first come first served, each given its slots
        (called locked)."""
        taken = []
        while self.waiting and (self.waiting[0].cancelled or self.waiting[0].generation.params.num_samples
                                <= len(self.free)):
            request = self.waiting.popleft()
            if not request.cancelled:
                n = request.generation.params.num_samples
                request.rows, self.free = self.free[:n], self.free[n:]
                taken.append(request)
        return taken

    def _step(self, admitted: list[Request]) -> None:
        for request in admitted:
            self._alone(request, self._admit, request)
        for request in list(self.running):
            if request.cancelled:
                self._retire(request, None)
                continue
            picked = self._alone(request, request.generation.pick, request.logits)
            if picked is None:
                continue
            gen, (new, all_done) = request.generation, picked
            self._notify(request, Tokens(new))
            if all_done or gen.steps == gen.params.max_new_tokens:
                gen.end()
                self._retire(request, Finished(list(gen.finish), list(gen.stop_token)))
        if self.running:
            self._decode()

    def _alone(self, request: Request, work: Callable, *args):
        """`work(*args)` for this request alone (its prompt, its pick): if it raises, only this request
        fails (None is returned) and the others in the batch go on."""
        try:
            return work(*args)
        except Exception as e:
            log.exception("a request failed on its own")
            self._retire(request, Failed(f"generation failed: {type(e).__name__}: {e}"))
            return None

    def _admit(self, request: Request) -> None:
        """Run the prompt alone, then copy its cache into the request's slots."""
        request.logits = request.generation.prefill()
        request.index = torch.tensor(request.rows, device=self.engine.device)
        self.running.append(request)
        self.peak_running = max(self.peak_running, len(self.running))
        self._copy_in(request)

    def _decode(self) -> None:
        """One step for every running request: the newest token of each slot, one pass per busy group."""
        eng, size = self.engine, self.group_size
        sliding = [r for r in self.running if r.generation.must_slide]
        batched = [r for r in self.running if not r.generation.must_slide]
        tokens = torch.zeros(self.max_batch, 1, dtype=torch.long, device=eng.device)
        positions = [0] * self.max_batch  # idle slots compute a throwaway token at position 0
        for request in batched:
            ids, pos = request.generation.next_input()
            tokens[request.index] = ids
            for row in request.rows:
                positions[row] = pos
        logits = torch.empty(self.max_batch, eng.n_vocab, device=eng.device)  # rows of idle groups unused
        for g in sorted({row // size for r in batched for row in r.rows}):
            rows = slice(g * size, (g + 1) * size)
            with torch.no_grad(), eng.autocast():
                out = eng.model(tokens[rows], cache=self.groups[g], start_pos=positions[rows], last_only=True)
            logits[rows] = out[:, -1, : eng.n_vocab]
        self.steps += bool(batched)
        for request in batched:
            request.logits = logits[request.index]
        # After the passes: their idle rows wrote position 0 of these requests' slots, now overwritten.
        for request in sliding:
            request.logits = request.generation.feed()
            self._copy_in(request)

    def _copy_in(self, request: Request) -> None:
        """Copy the request's own cache (its prompt, or its window after a slide) into its slots."""
        gen = request.generation
        own, length = gen.cache, gen.n - gen.w
        for sample, slot in enumerate(request.rows):
            group, row = self.groups[slot // self.group_size], slot % self.group_size
            for i in range(len(own.k)):
                if group.k[i] is None:  # the group's first use: allocate like the request's own cache
                    _, H, _, D = own.k[i].shape
                    group.k[i] = own.k[i].new_zeros(self.group_size, H, group.max_len, D)
                    group.v[i] = own.v[i].new_zeros(self.group_size, H, group.max_len, D)
                group.k[i][row, :, :length] = own.k[i][sample, :, :length]
                group.v[i][row, :, :length] = own.v[i][sample, :, :length]

    def _retire(self, request: Request, event: Event | None) -> None:
        if request in self.running:
            self.running.remove(request)
        if request.rows:  # (a request that failed in its prefill holds rows but never ran)
            with self.cond:
                self.free, request.rows = sorted(self.free + request.rows), []
        if event is not None:
            self._notify(request, event)

    def _notify(self, request: Request, event: Event) -> None:
        if request.cancelled:
            return
        try:
            request.listener(event)
        except Exception:  # a broken listener loses its own request only
            log.exception("a request listener failed; cancelling that request")
            request.cancel()

    def _drain(self) -> None:
        """At close: fail the running requests where they are (their replies are cut short) and the waiting ones."""
        for request in list(self.running):
            self._retire(request, Failed(SHUTTING_DOWN, "shutting_down"))
        with self.cond:
            waiting, self.waiting = list(self.waiting), deque()
        for request in waiting:
            self._notify(request, Failed(SHUTTING_DOWN, "shutting_down"))
