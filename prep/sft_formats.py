"""The instruction-data formats `prep sft` reads, each turned into a list of chat messages.

* ``belle_multiturn`` (``BelleGroup/multiturn_chat_0.8M``): ``instruction`` holds the whole history as
  ``Human:`` / ``Assistant:`` turns ending with an empty ``Assistant:``; ``output`` is the final reply.
* ``alpaca`` (single-turn Belle sets such as ``BelleGroup/train_0.5M_CN``, Alpaca): ``instruction``,
  optional ``input``, ``output``; one question, one reply.
* ``sharegpt``: ``conversations`` (or ``messages``), a list of ``{"from", "value"}`` with roles
  human/gpt/system, or ``{"role", "content"}`` with user/assistant/system; an optional top-level
  ``system`` string.

A row that cannot be used raises `RowError` with a short reason (``empty_reply``,
``markers_out_of_order``, ...) that the pipeline counts. Every turn's text is stripped of surrounding
whitespace (Belle writes ``\\nAssistant:`` with no space; the newline before a marker belongs to the
marker). A non-empty ``input`` is appended to the last user message after a newline.

The format is chosen once per file from its first rows (`detect_row_format`), not per row, so a
single-turn instruction that happens to begin with "Human:" is not mistaken for a history.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from prep.chat_template import Message

FORMATS = ("belle_multiturn", "alpaca", "sharegpt")
DETECT_ROWS = 100  # rows looked at to choose a file's format

# A marker counts only at the very start of the text or right after a newline.
_MARKER = re.compile(r"(?:^|\n)(Human|Assistant):")
_STARTS_WITH_HUMAN = re.compile(r"\s*Human:")

_SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "model": "assistant",
    "system": "system",
}  # fmt: skip


class RowError(ValueError):
    """A row that cannot become a dialog; `reason` is the key it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _field(row: dict, key: str, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            raise RowError("missing_field", key)
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{key} is {type(value).__name__}, expected a string")
    return value


def _with_input(question: str, extra: str) -> str:
    extra = extra.strip()
    if not extra:
        return question
    return f"{question}\n{extra}" if question else extra


def _check_texts(messages: list[Message]) -> list[Message]:
    for role, content in messages:
        if not content:
            raise RowError("empty_reply" if role == "assistant" else "empty_message")
    return messages


def belle_multiturn_messages(row: dict) -> list[Message]:
    """Split a Belle multi-turn history on its markers and fill the final, empty Assistant turn with `output`."""
    history, extra, output = _field(row, "instruction"), _field(row, "input", False), _field(row, "output")
    parts = _MARKER.split(history)
    if len(parts) == 1:
        raise RowError("no_markers")
    if parts[0].strip():
        raise RowError("text_before_first_marker")
    speakers, texts = parts[1::2], [t.strip() for t in parts[2::2]]
    expected = ["Human", "Assistant"] * (len(speakers) // 2 + 1)
    if speakers != expected[: len(speakers)]:
        raise RowError("markers_out_of_order")
    if speakers[-1] != "Assistant" or texts[-1]:
        raise RowError("history_not_ending_in_assistant_marker")
    texts[-2] = _with_input(texts[-2], extra)
    texts[-1] = output.strip()
    roles = ["user" if s == "Human" else "assistant" for s in speakers]
    return _check_texts(list(zip(roles, texts, strict=True)))


def alpaca_messages(row: dict) -> list[Message]:
    """One question (instruction, then input on a new line) and its reply."""
    question = _with_input(_field(row, "instruction").strip(), _field(row, "input", False))
    return _check_texts([("user", question), ("assistant", _field(row, "output").strip())])


def turn_message(turn: object) -> Message:
    """One ShareGPT ``{"from", "value"}`` or ``{"role", "content"}`` turn as (role, stripped text)."""
    if not isinstance(turn, dict):
        raise RowError("wrong_type", f"a turn is {type(turn).__name__}, expected an object")
    role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
    role = _SHAREGPT_ROLES.get(str(turn.get(role_key)).lower())
    if role is None:
        raise RowError("unknown_role", repr(turn.get(role_key)))
    return role, _field(turn, text_key).strip()


def sharegpt_messages(row: dict, repairs: list[str] | None = None) -> list[Message]:
    """Turns of a ShareGPT-style row. A trailing unanswered user turn trains nothing: it is dropped and
    noted in `repairs` as ``unanswered_last_turn_dropped``."""
    key = "conversations" if "conversations" in row else "messages"
    turns = row.get(key)
    if turns is None:
        raise RowError("missing_field", "conversations")
    if not isinstance(turns, list):
        raise RowError("wrong_type", f"{key} is {type(turns).__name__}, expected a list")
    messages: list[Message] = []
    system = _field(row, "system", False).strip()
    if system:
        messages.append(("system", system))
    messages += [turn_message(turn) for turn in turns]
    if messages and messages[-1][0] == "user":
        messages.pop()
        if repairs is not None:
            repairs.append("unanswered_last_turn_dropped")
    dialog = messages[1:] if messages and messages[0][0] == "system" else messages
    if not any(role == "assistant" for role, _ in dialog):
        raise RowError("no_reply")
    if [role for role, _ in dialog] != ["user", "assistant"] * (len(dialog) // 2) or len(dialog) % 2:
        raise RowError("turns_out_of_order")
    return _check_texts(messages)


PARSERS = {
    "belle_multiturn": belle_multiturn_messages,
    "alpaca": alpaca_messages,
    "sharegpt": sharegpt_messages,
}


def row_messages(row: object, fmt: str, repairs: list[str] | None = None) -> list[Message]:
    """Messages of one decoded JSON row in format `fmt`, or `RowError`; fixes made are added to `repairs`."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", type(row).__name__)
    if fmt not in PARSERS:
        raise RowError("unknown_format")
    if fmt == "sharegpt":
        return sharegpt_messages(row, repairs)
    return PARSERS[fmt](row)


def row_format(row: object) -> str | None:
    """The format one row looks like, or None."""
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("conversations"), list) or isinstance(row.get("messages"), list):
        return "sharegpt"
    if isinstance(row.get("instruction"), str) and "output" in row:
        return "belle_multiturn" if _STARTS_WITH_HUMAN.match(row["instruction"]) else "alpaca"
    return None


def detect_row_format(rows: Iterable[object], classify: Callable[[object], str | None] = row_format,
                      formats: Sequence[str] = FORMATS) -> str | None:
    """The most common format among the first `DETECT_ROWS` recognisable rows (None if there are none);
    `classify` names one row's format (`prep.pref_formats` passes its own, with its `formats`)."""
    votes: Counter[str] = Counter()
    for row in rows:
        fmt = classify(row)
        if fmt is not None:
            votes[fmt] += 1
            if sum(votes.values()) >= DETECT_ROWS:
                break
    if not votes:
        return None
    return max(formats, key=lambda f: votes[f])  # ties go to the earlier format in `formats`: deterministic
