"""ChatML, as Qwen uses it: the one place where dialogs become pieces, for training AND for chatting.

    <|im_start|>system\\n{system}<|im_end|>\\n          (optional)
    <|im_start|>user\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{reply}<|im_end|>\\n
    ...
    <|endoftext|>                                      (training only: separates dialogs)

Special ids come only from here (``Piece(special_id=...)``); every message is a text piece encoded
with the tokenizer's ordinary encoding, so a literal ``<|im_start|>`` typed by a user stays text.

The loss mask (``Piece.trained``) is 1 exactly on each assistant reply and its ``<|im_end|>``: the
model learns to write replies and to stop. Everything it is given rather than asked to produce is 0:
system and user text, role headers, the ``\\n`` after ``<|im_end|>`` and the ``<|endoftext|>``.

The assistant header ``assistant\\n`` is its own untrained piece, apart from the reply. At inference the
prompt ends with ``<|im_start|>assistant\\n`` (`render_prompt`) and the model generates the reply from
there, so the reply must be tokenized on its own in training as well; otherwise BPE could merge the
header's newline into the reply's first token and training and chatting would see different ids.
User and system headers are never generated, so they share one piece with their text, which also
makes the ids those of Hugging Face's ``apply_chat_template`` over `CHATML_TEMPLATE` (the Jinja form
of this module, written into exported tokenizers) for messages that do not begin with whitespace.

A message is a ``(role, content)`` pair (`Message`), or a ``{"role", "content"}`` dict as chat APIs send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from common.errors import UserError
from prep.records import Piece
from prep.tokenizer import SpecialIds

ROLES = ("system", "user", "assistant")
Message = tuple[str, str]  # (role, content), role in ROLES

# The same ChatML as Jinja, for Hugging Face tokenizers (`apply_chat_template`): exported with the
# model so that transformers renders exactly what `chat_pieces` trains on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ChatFormatError(UserError, ValueError):
    """Messages that ChatML cannot express as given (an unknown role, a system message after the first)."""


def _role_and_content(message: Mapping[str, str] | Sequence[str]) -> tuple[str, str]:
    if type(message) is tuple and len(message) == 2:  # the readers' form: skip the slower ABC check
        role, content = message
    elif isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
    else:
        role, content = message
    if role not in ROLES:
        raise ChatFormatError(f"role must be one of {ROLES}, not {role!r}")
    if not isinstance(content, str):
        raise ChatFormatError(f"content of a {role} message must be a string, not {type(content).__name__}")
    return role, content


@lru_cache(maxsize=8)
def _fixed_pieces(eot_id: int, im_start_id: int, im_end_id: int) -> dict[str, Piece]:
    """The pieces every dialog shares, built once (pieces are frozen, so sharing them is safe)."""
    return {
        "im_start": Piece(special_id=im_start_id),
        "im_end": Piece(special_id=im_end_id),
        "im_end_trained": Piece(special_id=im_end_id, trained=True),
        "eot": Piece(special_id=eot_id),
        "assistant_header": Piece(text="assistant\n"),
        "newline": Piece(text="\n"),
    }


def _fixed(specials: SpecialIds) -> dict[str, Piece]:
    """`specials` may be a `SpecialIds` or a `Tokenizer` (which has the same three attributes)."""
    return _fixed_pieces(specials.eot_id, specials.im_start_id, specials.im_end_id)


def message_pieces(role: str, content: str, specials: SpecialIds) -> list[Piece]:
    """One ChatML message; only an assistant message is trained (its reply and its <|im_end|>)."""
    f = _fixed(specials)
    if role == "assistant":
        return [f["im_start"], f["assistant_header"], Piece(text=content, trained=True), f["im_end_trained"],
                f["newline"]]
    return [f["im_start"], Piece(text=f"{role}\n{content}"), f["im_end"], f["newline"]]


def generation_prompt_pieces(specials: SpecialIds) -> list[Piece]:
    """``<|im_start|>assistant\\n``: the same pieces an assistant message begins with in training."""
    f = _fixed(specials)
    return [f["im_start"], f["assistant_header"]]


def chat_pieces(
    messages: Iterable[Mapping[str, str] | Sequence[str]],
    specials: SpecialIds,
    *,
    add_generation_prompt: bool = False,
    end_of_text: bool = False,
) -> tuple[list[Piece], list[int]]:
    """Render messages (``{"role", "content"}`` dicts or ``(role, content)`` pairs) as pieces.

    Returns the pieces and `turn_starts`: the index of the ``<|im_start|>`` piece of every user message,
    so a training sampler can begin a block at any user turn of a dialog longer than the block. The
    first user turn after a system message is the exception: its entry is the system message's (piece
    0), so the blocks that start a dialog include its system prompt, as chatting with one will.
    A system message is allowed only first. Turn order is the caller's business: readers check it
    for training data, and a chat front end may send what it likes.
    """
    pieces: list[Piece] = []
    turn_starts: list[int] = []
    has_system = False
    for i, message in enumerate(messages):
        role, content = _role_and_content(message)
        if role == "system":
            if i > 0:
                raise ChatFormatError("a system message may only come first")
            has_system = True
        if role == "user":
            turn_starts.append(0 if has_system and not turn_starts else len(pieces))
        pieces += message_pieces(role, content, specials)
    if add_generation_prompt:
        pieces += generation_prompt_pieces(specials)
    if end_of_text:
        pieces.append(_fixed(specials)["eot"])
    return pieces, turn_starts


def chatml_text(messages: Iterable[Mapping[str, str] | Sequence[str]]) -> str:
    """The dialog as one ChatML string, special tokens written out: for keys, logs and comparisons."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in map(_role_and_content, messages))


def encode_pieces(pieces: Sequence[Piece], tokenizer) -> tuple[list[int], list[int]]:
    """Ids and mask (1 = trained) of pieces, encoding all their text in one batch call."""
    encoded = iter(tokenizer.encode_batch([p.text for p in pieces if p.text is not None]))
    ids: list[int] = []
    mask: list[int] = []
    for p in pieces:
        piece_ids = [p.special_id] if p.text is None else next(encoded)
        ids += piece_ids
        mask += [int(p.trained)] * len(piece_ids)
    return ids, mask


def render_prompt(
    messages: Iterable[Mapping[str, str] | Sequence[str]],
    tokenizer,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a chat history for inference, built from exactly the pieces training uses.

    With `add_generation_prompt` the ids end with ``<|im_start|>assistant\\n``: generate from there and
    stop at ``<|im_end|>``. No ``<|endoftext|>`` is added.
    """
    pieces, _ = chat_pieces(messages, tokenizer, add_generation_prompt=add_generation_prompt)
    return encode_pieces(pieces, tokenizer)[0]
