"""The preference-data formats `prep pref` reads, each turned into (prompt messages, chosen, rejected).

* ``sharegpt_pref`` (LLaMA-Factory, e.g. ``DPO-En-Zh-20k``, MedicalGPT's ``dpo_zh_500.jsonl``):
  ``{"conversations": [{"from": "system"|"human"|"gpt", "value"}, ...], "chosen": R, "rejected": R}``
  where R is a string or one ``{"from", "value"}`` turn; an optional top-level ``system`` string.
* ``trl``: ``{"prompt", "chosen", "rejected"}``; the prompt a string or a list of ``{"role", "content"}``,
  each reply a string or a list ending in the assistant's message.
* ``minimind`` (MiniMind's ``dpo.jsonl``, trl's implicit-prompt form): ``{"chosen": [messages],
  "rejected": [messages]}``, two whole conversations that share everything but the last message.
* ``reward`` (MedicalGPT's reward data): ``{"system", "history": [[question, answer], ...], "question",
  "response_chosen", "response_rejected"}``.

The prompt ends with a user turn and alternates user / assistant after an optional system message.
A row that cannot be used raises `RowError` with the reason it is counted under.
"""

from __future__ import annotations

from collections.abc import Iterable

from prep.chat_template import Message
from prep.sft_formats import RowError, detect_row_format, turn_message

FORMATS = ("sharegpt_pref", "trl", "minimind", "reward")
FORMAT_HELP = ('sharegpt_pref {"conversations", "chosen", "rejected"}, trl {"prompt", "chosen", "rejected"}, '
               'minimind {"chosen": [messages], "rejected": [messages]}, reward {"question", "response_chosen", '
               '"response_rejected"}')
Pair = tuple[list[Message], str, str]  # prompt (ends with a user turn), chosen reply, rejected reply


def _text(value: object, key: str) -> str:
    if value is None:
        raise RowError("missing_field", key)
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{key} is {type(value).__name__}, expected a string")
    return value.strip()


def _turns(value: object, key: str) -> list[Message]:
    if not isinstance(value, list):
        raise RowError("missing_field" if value is None else "wrong_type", key)
    return [turn_message(t) for t in value]


def _checked_prompt(messages: list[Message], system: str = "") -> list[Message]:
    """System first (the row's own, or `system`), then user / assistant turns ending with a user turn."""
    if system and not (messages and messages[0][0] == "system"):
        messages = [("system", system), *messages]
    dialog = messages[1:] if messages and messages[0][0] == "system" else messages
    if not dialog:
        raise RowError("no_prompt")
    roles = [role for role, _ in dialog]
    if len(roles) % 2 == 0 or roles != (["user", "assistant"] * len(roles))[: len(roles)]:
        raise RowError("turns_out_of_order")
    if any(not text for _, text in messages):
        raise RowError("empty_message")
    return messages


def _reply(value: object, key: str) -> str:
    """A reply given as a string, one turn, or a list of turns ending with the assistant's."""
    if isinstance(value, (dict, list)):
        turns = _turns(value if isinstance(value, list) else [value], key)
        if not turns or turns[-1][0] != "assistant":
            raise RowError("no_reply", key)
        return turns[-1][1]
    return _text(value, key)


def sharegpt_pair(row: dict) -> Pair:
    prompt = _turns(row.get("conversations"), "conversations")
    system = _text(row["system"], "system") if isinstance(row.get("system"), str) else ""
    return _checked_prompt(prompt, system), _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected")


def trl_pair(row: dict) -> Pair:
    prompt = row.get("prompt")
    messages = [("user", _text(prompt, "prompt"))] if not isinstance(prompt, list) else _turns(prompt, "prompt")
    return _checked_prompt(messages), _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected")


def minimind_pair(row: dict) -> Pair:
    chosen, rejected = _turns(row.get("chosen"), "chosen"), _turns(row.get("rejected"), "rejected")
    if not chosen or not rejected or chosen[-1][0] != "assistant" or rejected[-1][0] != "assistant":
        raise RowError("no_reply")
    if chosen[:-1] != rejected[:-1]:
        raise RowError("prompts_differ")
    return _checked_prompt(chosen[:-1]), chosen[-1][1], rejected[-1][1]


def reward_pair(row: dict) -> Pair:
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 for h in history):
        raise RowError("wrong_type", "history must be a list of [question, answer]")
    messages = [m for q, a in history for m in (("user", _text(q, "history")), ("assistant", _text(a, "history")))]
    messages.append(("user", _text(row.get("question"), "question")))
    system = _text(row["system"], "system") if isinstance(row.get("system"), str) else ""
    return (_checked_prompt(messages, system), _reply(row.get("response_chosen"), "response_chosen"),
            _reply(row.get("response_rejected"), "response_rejected"))


PARSERS = {"sharegpt_pref": sharegpt_pair, "trl": trl_pair, "minimind": minimind_pair, "reward": reward_pair}


def row_pair(row: object, fmt: str) -> Pair:
    """The pair of one decoded JSON row in format `fmt`, or `RowError` (empty or identical replies too)."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", type(row).__name__)
    if fmt not in PARSERS:
        raise RowError("unknown_format")
    prompt, chosen, rejected = PARSERS[fmt](row)
    if not chosen or not rejected:
        raise RowError("empty_reply")
    if chosen == rejected:
        raise RowError("identical_replies")
    return prompt, chosen, rejected


def row_format(row: object) -> str | None:
    """The format one row looks like, or None."""
    if not isinstance(row, dict):
        return None
    if "response_chosen" in row:
        return "reward"
    if "chosen" not in row:
        return None
    if isinstance(row.get("conversations"), list):
        return "sharegpt_pref"
    if "prompt" in row:
        return "trl"
    return "minimind" if isinstance(row.get("chosen"), list) else None


def detect_pref_format(rows: Iterable[object]) -> str | None:
    """The most common format among the first rows (None if none is recognisable)."""
    return detect_row_format(rows, row_format, FORMATS)
