"""The generation engine: a prompt processed once into a KV cache, then one token per step.

`Engine.stream` yields, step by step, the new token of every sample (several samples of one prompt
are rows of one batch; the prompt is run once and its cache copied to each row). A sample ends at
one of the engine's stop ids (``<|endoftext|>`` for a base model; ``<|im_end|>`` or
``<|endoftext|>`` for a chat model) or after `max_new_tokens`. Padded vocabulary rows (ids >=
``len(tokenizer)``) are cut from the logits, so they can never be produced.

Contexts longer than the block slide. The model has learned positions ``0 .. block_size-1`` only,
so a cache cannot simply drop its oldest entry (every kept key would need a new position). Instead,
when the next token would not fit, the engine keeps the last ``block_size // 2`` tokens, encodes them
again from position 0 (one prompt-sized forward pass) and carries on: half a block of context is
always kept, and a re-encode happens once every ``block_size // 2`` tokens rather than every token.
A prompt longer than the block starts from its last `block_size` tokens.

``use_cache=False`` recomputes the whole window for every token, with the very same windows. It is
the baseline of ``bench/generate.py`` and lets tests check that the cache changes nothing.

`TextStream` turns the token stream into text incrementally: a Chinese character is 3 UTF-8 bytes
and a byte-level BPE token may hold only part of one, so incomplete bytes are held back until the
character is whole instead of being printed as U+FFFD.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from model.archs.gpt2 import GPT, KVCache
from model.sampling import SamplingParams, sample_next


@dataclass
class Completion:
    """One sample: its new tokens (the stop token left out) and why it ended ("stop" or "length")."""

    tokens: list[int]
    finish_reason: str
    stop_token: int | None = None


def slide_keep(block_size: int) -> int:
    """Tokens kept when the context slides: half a block."""
    return max(1, block_size // 2)


class Engine:
    """Generation for one model. `n_vocab` is the tokenizer's length; `stop_ids` end a sample."""

    def __init__(self, model: GPT, n_vocab: int, stop_ids: Iterable[int],
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        if n_vocab > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {n_vocab} ids but the model only {model.config.vocab_size} rows")
        self.model = model
        self.n_vocab = n_vocab
        self.stop_ids = sorted(set(stop_ids))
        self.autocast = autocast
        self.device = next(model.parameters()).device

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def generate(self, prompt: Sequence[int], params: SamplingParams, *, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> list[Completion]:
        """Run `stream` to the end and collect one `Completion` per sample."""
        tokens: list[list[int]] = [[] for _ in range(params.num_samples)]
        run = self.stream(prompt, params, use_cache=use_cache, generator=generator)
        for step in run:
            for row, t in enumerate(step):
                if t is not None:
                    tokens[row].append(t)
        return [Completion(t, reason, stop) for t, reason, stop in zip(tokens, run.finish, run.stop_token, strict=True)]

    def stream(self, prompt: Sequence[int], params: SamplingParams, *, use_cache: bool = True,
               generator: torch.Generator | None = None) -> Generation:
        """An iterable over steps: each step is a list with every sample's new token, or None for a
        sample that has ended (at a stop token, which is not yielded, or earlier)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt is empty; give at least one token (e.g. <|endoftext|>)")
        bad = [t for t in prompt if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"prompt ids {bad[:5]} are outside the tokenizer's {self.n_vocab} ids")
        if generator is None:
            generator = torch.Generator(self.device).manual_seed(params.seed)
        return Generation(self, prompt, params, use_cache, generator)


class Generation:
    """One call of `Engine.stream`. Iterate it once; afterwards `finish[i]` says why sample i ended."""

    def __init__(self, engine: Engine, prompt: list[int], params: SamplingParams, use_cache: bool,
                 generator: torch.Generator):
        self.engine, self.prompt, self.params = engine, prompt, params
        self.use_cache, self.generator = use_cache, generator
        self.finish: list[str | None] = [None] * params.num_samples
        self.stop_token: list[int | None] = [None] * params.num_samples
        self.n_new = [0] * params.num_samples  # tokens yielded per sample so far
        self.slides = 0  # how many times the context slid (re-encoded its last half block)

    def __iter__(self) -> Iterator[list[int | None]]:
        logits = self.prefill()
        while True:
            new, all_done = self.pick(logits)
            yield new
            if all_done or self.steps == self.params.max_new_tokens:
                break
            logits = self.feed()
        self.end()

    # The steps of `__iter__`, public so that a scheduler (`model.serve.batching`) can run many generations
    # and decode their next tokens together. Grad mode and autocast are thread-wide, so they are
    # entered around each computation and never held across a `yield` (they would leak into the
    # caller's code).

    def prefill(self) -> torch.Tensor:
        """Run the prompt; the logits (samples, n_vocab) of its last position."""
        return self._compute(self._prefill)

    def pick(self, logits: torch.Tensor) -> tuple[list[int | None], bool]:
        """Choose every sample's next token from `logits`; returns them (None: ended) and whether all ended."""
        return self._compute(self._pick, logits)

    def feed(self) -> torch.Tensor:
        """Run the newest tokens (sliding the window when it is full); the next logits."""
        return self._compute(self._feed)

    @property
    def steps(self) -> int:
        """Tokens picked so far per sample."""
        return self.n - len(self.prompt)

    @property
    def must_slide(self) -> bool:
        """The newest token would not fit the context: the next `feed` re-encodes the last half block."""
        return self.n - self.w > self.engine.block_size

    def next_input(self) -> tuple[torch.Tensor, int]:
        """The newest token of every sample (samples, 1) and its position in the cache (no slide due)."""
        return self.buf[:, self.n - 1 : self.n], self.n - 1 - self.w

    def end(self) -> None:
        """Samples that did not stop ended at the length limit."""
        self.finish = [f or "length" for f in self.finish]

    def _compute(self, fn, *args):
        with torch.no_grad(), self.engine.autocast():
            return fn(*args)

    def _forward(self, idx: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        """Logits (B, n_vocab) of the last position: padded vocabulary rows are cut off here."""
        logits = self.engine.model(idx, cache=self.cache, start_pos=start_pos, last_only=True)
        return logits[:, -1, : self.engine.n_vocab]

    def _prefill(self) -> torch.Tensor:
        eng, p = self.engine, self.params
        T, B, n = eng.block_size, p.num_samples, len(self.prompt)
        self.buf = torch.empty(B, n + p.max_new_tokens, dtype=torch.long, device=eng.device)
        self.buf[:, :n] = torch.tensor(self.prompt, device=eng.device)
        self.n = n
        self.stops = torch.tensor(eng.stop_ids, dtype=torch.long, device=eng.device)
        self.done = torch.zeros(B, dtype=torch.bool, device=eng.device)
        self.seen = None
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(B, eng.n_vocab, dtype=torch.bool, device=eng.device)
            self.seen[:, self.buf[0, :n]] = True
        self.w = max(0, n - T)  # the window buf[w:n] is what the model sees
        self.cache = None
        if not self.use_cache:
            return self._forward(self.buf[:, self.w : n])
        self.cache = eng.model.new_cache(min(T, n - self.w + p.max_new_tokens))
        logits = self._forward(self.buf[:1, self.w : n])
        expand_cache(self.cache, B)  # the prompt ran once; each sample gets its own copy
        return logits.expand(B, -1)

    def _pick(self, logits: torch.Tensor) -> tuple[list[int | None], bool]:
        """Sample every row's next token and append it; returns what to yield and whether all ended."""
        B = self.params.num_samples
        nxt = sample_next(logits, self.params, self.generator, self.seen)
        nxt = torch.where(self.done, self.buf[:, self.n - 1], nxt)  # an ended sample repeats its last token
        self.buf[:, self.n] = nxt
        self.n += 1
        if self.seen is not None:
            self.seen[torch.arange(B, device=nxt.device), nxt] = True
        hit = torch.isin(nxt, self.stops) & ~self.done
        values, hits, was_done = nxt.tolist(), hit.tolist(), self.done.tolist()  # one device sync per step
        self.done |= hit
        for row in range(B):
            if hits[row]:
                self.finish[row], self.stop_token[row] = "stop", values[row]
        new = [None if (was_done[row] or hits[row]) else values[row] for row in range(B)]
        for row, t in enumerate(new):
            self.n_new[row] += t is not None
        return new, all(f is not None for f in self.finish)

    def _feed(self) -> torch.Tensor:
        """Run the newest token (or, when it would not fit, the last half block again from position 0)."""
        n, T = self.n, self.engine.block_size
        if self.must_slide:  # buf[n-1] would sit at position T
            self.w = n - slide_keep(T)
            self.slides += 1
            return self._forward(self.buf[:, self.w : n], start_pos=0 if self.cache is not None else None)
        if self.cache is not None:
            return self._forward(self.buf[:, n - 1 : n])
        return self._forward(self.buf[:, self.w : n])


def row_tokens(run: Iterable[list[int | None]], row: int = 0) -> Iterator[int]:
    """The new tokens of one sample of a `Generation`, as they come."""
    for step in run:
        if step[row] is not None:
            yield step[row]


def expand_cache(cache: KVCache, batch: int) -> None:
    """Copy a batch-1 cache into `batch` rows (after a prompt that all samples share)."""
    if batch == 1:
        return
    for i in range(len(cache.k)):
        if cache.k[i] is not None:
            cache.k[i] = cache.k[i].expand(batch, -1, -1, -1).contiguous()
            cache.v[i] = cache.v[i].expand(batch, -1, -1, -1).contiguous()


class TextStream:
    """Incremental decoding: `push` a token, get the text that is now complete (maybe "").

    Bytes that could still become a character are held back; bytes that can never be valid UTF-8
    come out as U+FFFD (the model really produced them). `flush` ends the stream.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.decoder.decode(self.tokenizer.token_bytes(int(token_id)))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def stream_text(tokens: Iterable[int], tokenizer, final: bool = True) -> Iterator[str]:
    """Text pieces of a token stream, each made only of whole characters.

    At the end, bytes of a character the stream stopped inside come out as U+FFFD (`final`), or are
    dropped (``final=False``: a sample cut by a token limit, whose next token would have completed it).
    """
    stream = TextStream(tokenizer)
    for t in tokens:
        piece = stream.push(t)
        if piece:
            yield piece
    tail = stream.flush() if final else ""
    if tail:
        yield tail
