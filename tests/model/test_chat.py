"""Chat: the history is cut at turn boundaries (oldest first, system kept), the loop's commands and exits."""

from __future__ import annotations

from model.chat import ChatSession, fit_history, reply_reserve, run_chat
from model.generate import Engine
from model.sampling import SamplingParams
from prep.chat_template import render_prompt
from tests.model.conftest import tiny_model

TURNS = [("第一个问题", "第一个回答"), ("second question", "second answer"), ("第三", "third answer, longer")]


def history_messages(system, turns, user):
    messages = [("system", system)] if system else []
    for question, answer in turns:
        messages += [("user", question), ("assistant", answer)]
    return messages + [("user", user)]


def test_history_that_fits_is_kept_whole(byte_tokenizer):
    fitted = fit_history("你是助手", TURNS, "最后", byte_tokenizer, budget=10_000)
    assert fitted.dropped_turns == 0 and not fitted.overflow
    assert fitted.ids == render_prompt(history_messages("你是助手", TURNS, "最后"), byte_tokenizer)


def test_oldest_whole_turns_go_first_and_the_system_prompt_stays(byte_tokenizer):
    full = len(render_prompt(history_messages("你是助手", TURNS, "最后"), byte_tokenizer))
    without_first = len(render_prompt(history_messages("你是助手", TURNS[1:], "最后"), byte_tokenizer))
    for budget in range(without_first, full):  # one token short of the whole history, down to the cut
        fitted = fit_history("你是助手", TURNS, "最后", byte_tokenizer, budget)
        assert fitted.dropped_turns == 1
        assert fitted.messages == history_messages("你是助手", TURNS[1:], "最后")
        assert len(fitted.ids) <= budget
    fitted = fit_history("你是助手", TURNS, "最后", byte_tokenizer, without_first - 1)
    assert fitted.dropped_turns == 2
    roles = [role for role, _ in fitted.messages]
    assert roles == ["system", "user", "assistant", "user"]  # whole turns: never a reply without its question
    assert fitted.messages[1][1] == "第三"


def test_a_message_too_long_for_any_history_is_flagged(byte_tokenizer):
    fitted = fit_history(None, TURNS, "很长" * 50, byte_tokenizer, budget=40)
    assert fitted.overflow and fitted.dropped_turns == len(TURNS)
    assert [role for role, _ in fitted.messages] == ["user"]


def test_reserve_leaves_room_for_the_reply():
    assert reply_reserve(256, 200) == 128
    assert reply_reserve(256, 50) == 50


def session(byte_tokenizer, block_size=128, max_new=8, system=None) -> ChatSession:
    engine = Engine(tiny_model(block_size=block_size), len(byte_tokenizer), [byte_tokenizer.im_end_id,
                                                                            byte_tokenizer.eot_id])
    return ChatSession(engine, byte_tokenizer, SamplingParams(max_new_tokens=max_new, temperature=0), system=system)


def test_session_sends_the_rendered_history_and_drops_turns_when_full(byte_tokenizer):
    s = session(byte_tokenizer, block_size=128, max_new=8, system="sys")
    for q in ["你好", "再说一次", "第三次问", "第四次问"]:
        reply = "".join(s.reply(q))
        assert s.turns[-1] == (q, reply)
        assert len(s.last.ids) <= 128 - 8
        assert s.last.ids == render_prompt(s.last.messages, byte_tokenizer)
        assert s.last.messages[0] == ("system", "sys")
    assert len(s.turns) < 4  # 120 tokens cannot hold four byte-level turns: the oldest went
    assert s.last.messages[1][0] == "user"


def test_loop_runs_scripted_messages_with_reset_and_exit(byte_tokenizer):
    s = session(byte_tokenizer)
    out, notes = [], []
    replies = run_chat(s, ["你好", "/reset", "again", "/exit", "never sent"], out.append, notes.append)
    text = "".join(out)
    assert replies == 2
    assert "user: 你好\nassistant: " in text and "never sent\nassistant" not in text
    assert notes == ["(history cleared)"]
    assert [q for q, _ in s.turns] == ["again"]  # the reset dropped the first turn


def test_interactive_loop_leaves_cleanly_on_eof_and_ctrl_c(byte_tokenizer):
    for ending in (EOFError, KeyboardInterrupt):
        answers = iter(["hi"])

        def read(prompt: str, answers=answers, ending=ending) -> str:
            try:
                return next(answers)
            except StopIteration:
                raise ending from None

        out: list[str] = []
        assert run_chat(session(byte_tokenizer), None, out.append, lambda _: None, read=read) == 1
        assert "".join(out).endswith("\n")


def test_fitting_a_long_history_encodes_each_message_once(byte_tokenizer, monkeypatch):
    """Thousands of short turns: fitting is linear (it was quadratic: each dropped turn re-rendered the rest)."""
    turns = [(f"问{i}", f"答{i}") for i in range(2000)]
    encoded = []
    real = byte_tokenizer.encode_batch
    monkeypatch.setattr(byte_tokenizer, "encode_batch", lambda texts: encoded.extend(texts) or real(texts))
    fitted = fit_history("你是助手", turns, "最后", byte_tokenizer, budget=200)
    assert len(encoded) < 4 * (2 * len(turns) + 2)  # each message once, plus its checks; not ~n²/2
    assert 0 < fitted.dropped_turns < len(turns) and len(fitted.ids) <= 200
    kept = turns[fitted.dropped_turns:]
    monkeypatch.undo()
    assert fitted.ids == render_prompt(history_messages("你是助手", kept, "最后"), byte_tokenizer)
    assert len(render_prompt(history_messages("你是助手", turns[fitted.dropped_turns - 1:],
                                                                  "最后"), byte_tokenizer)) > 200
