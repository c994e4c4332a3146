"""Multi-turn chat: the history as ChatML (`prep.chat_template`, the rendering SFT trained on), kept
within the model's block.

Before each reply the history is cut to fit ``block_size - reserve`` tokens, where `reserve` (half a
block, or max-new-tokens if smaller) is room for the reply. Whole turns go, oldest first (a turn is a
user message and the reply to it); a turn is never cut in the middle and the system prompt always
stays. Only if the newest message alone (with the system prompt) is still too long does the engine's
sliding window crop the prompt from the left; the user is told.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch

from model.generate import Engine, TextStream
from model.sampling import SamplingParams
from prep.chat_template import Message, chat_pieces, render_prompt
from prep.tokenizer import Tokenizer

EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"


@dataclass
class FittedPrompt:
    ids: list[int]
    messages: list[Message]
    dropped_turns: int  # oldest turns left out to fit
    overflow: bool  # even the newest message alone does not fit: the engine will crop it


def fit_history(system: str | None, turns: list[tuple[str, str]], user: str, tokenizer, budget: int) -> FittedPrompt:
    """The prompt ids (ending in the assistant header) with as many of the latest turns as fit `budget`."""
    head: list[Message] = [("system", system)] if system else []
    groups = [[("user", q), ("assistant", a)] for q, a in turns]
    return fit_turns(head, groups + [[("user", user)]], tokenizer, budget)


def fit_turns(head: list[Message], turns: list[list[Message]], tokenizer, budget: int) -> FittedPrompt:
    """`head` (the system prompt) and as many of the latest `turns` (message groups, oldest first) as
    fit `budget` tokens, rendered with the assistant header; the last turn is always kept.

    Every message is encoded once, and turns are taken newest first while they fit: linear in the
    history (re-rendering the rest after each dropped turn was quadratic, minutes for a long one).
    ChatML encodes each message apart, so the ids of kept turns are those of rendering them together.
    """
    chat_pieces(head + [m for turn in turns for m in turn], tokenizer)  # the whole history's checks (roles, order)
    head_ids = render_prompt(head, tokenizer, add_generation_prompt=False)
    header = render_prompt([], tokenizer, add_generation_prompt=True)
    used, kept = len(head_ids) + len(header), []
    for turn in reversed(turns):
        ids = render_prompt(turn, tokenizer, add_generation_prompt=False)
        if kept and used + len(ids) > budget:
            break
        used += len(ids)
        kept.append((turn, ids))
    kept.reverse()
    messages = head + [m for turn, _ in kept for m in turn]
    ids = head_ids + [t for _, turn_ids in kept for t in turn_ids] + header
    return FittedPrompt(ids, messages, len(turns) - len(kept), overflow=used > budget)


def reply_reserve(block_size: int, max_new_tokens: int) -> int:
    """Room kept free for the reply: max-new-tokens, but never more than half the block."""
    return min(max_new_tokens, block_size // 2)


@dataclass
class ChatSession:
    """The history of one conversation and the engine that answers it. Sampling is seeded once per
    session, so a scripted conversation gives the same replies every run."""

    engine: Engine
    tokenizer: Tokenizer
    params: SamplingParams
    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.params = replace(self.params, num_samples=1)
        self.generator = torch.Generator(self.engine.device).manual_seed(self.params.seed)
        self.last: FittedPrompt | None = None

    def reset(self) -> None:
        self.turns.clear()

    def reply(self, user: str) -> Iterator[str]:
        """Stream the reply to `user` as text pieces; the turn joins the history when it is done."""
        budget = self.engine.block_size - reply_reserve(self.engine.block_size, self.params.max_new_tokens)
        self.last = fit_history(self.system, self.turns, user, self.tokenizer, budget)
        del self.turns[: self.last.dropped_turns]  # a turn that no longer fits is gone for good
        stream = TextStream(self.tokenizer)
        pieces: list[str] = []
        run = self.engine.stream(self.last.ids, self.params, generator=self.generator)
        for step in run:
            if step[0] is None:
                continue
            piece = stream.push(step[0])
            if piece:
                pieces.append(piece)
                yield piece
        tail = stream.flush()
        if tail:
            pieces.append(tail)
            yield tail
        self.turns.append((user, "".join(pieces)))


def run_chat(session: ChatSession, inputs: Iterable[str] | None, write: Callable[[str], None],
             note: Callable[[str], None], read: Callable[[str], str] = input) -> int:
    """The terminal loop: `inputs` (scripted messages) or `read` (interactive) until /exit or EOF.

    `write` prints conversation text, `note` status lines. Returns the number of replies given.
    """
    scripted = inputs is not None
    source = iter(inputs) if scripted else None
    replies = 0
    while True:
        try:
            if scripted:
                line = next(source, None)
                if line is None:
                    break
                write(f"user: {line}\n")
            else:
                line = read("user: ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            break
        text = line.strip()
        if text in EXIT_COMMANDS:
            break
        if text == RESET_COMMAND:
            session.reset()
            note("(history cleared)")
            continue
        if not text:
            continue
        write("assistant: ")
        try:
            for piece in session.reply(line):
                write(piece)
        except KeyboardInterrupt:
            write("\n")
            note("(reply interrupted; it is not kept in the history)")
            continue
        write("\n")
        replies += 1
        fitted = session.last
        if fitted.overflow:
            note(f"(the message is longer than the model's context of {session.engine.block_size} tokens; "
                 "only its end was seen)")
        elif fitted.dropped_turns:
            note(f"(the {fitted.dropped_turns} oldest turn(s) no longer fit the context and were left out)")
    return replies
