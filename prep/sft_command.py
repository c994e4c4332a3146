"""The ``python -m prep sft`` command (registered in `prep.cli`)."""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import UserPath, one_line_errors
from prep.cli_common import prep_options


@click.command()
@click.argument("input_spec", metavar="INPUT")
@click.option("--out", type=UserPath(), default=Path("data_bin/sft"), show_default=True,
              help="Token folder to write (replaced only when the new one is complete).")
@prep_options
@click.option("--system", default="", metavar="TEXT",
              help="System prompt put before every dialog that has none of its own (default: none).")
@one_line_errors
def sft(input_spec: str, out: Path, tokenizer: str, recipe: str, vocab_size: int | None, val_fraction: float,
        workers: int | None, shard, system: str) -> None:
    """Tokenize chat / instruction data into ChatML dialogs with loss masks.

    \b
    INPUT is a file, a folder (every *.json / *.jsonl at any depth), or a Hugging Face dataset name
    such as BelleGroup/multiturn_chat_0.8M (streamed through `datasets`; needs the hub). Files may be
    JSON lines or one JSON array. Formats, detected per file from its first rows:
      Belle multi-turn  {"instruction": "Human:...\\nAssistant:...\\nHuman:...\\nAssistant:",
                         "input": "", "output": "<final reply>"}
      single-turn       {"instruction", "input" (optional), "output"}  (Belle train_*_CN, Alpaca)
      ShareGPT          {"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}
                        or {"messages": [{"role": "user"|"assistant"|"system", "content"}, ...]}

    \b
    Each dialog is rendered as ChatML and ends with <|endoftext|>:
      <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{reply}<|im_end|>\\n ...
    Loss mask: 1 on every assistant reply and its <|im_end|> (the final Belle `output` included);
    0 on system and user text, the role headers, the \\n after <|im_end|> and <|endoftext|>.
    A Belle marker counts only at the start of `instruction` or right after a newline; every turn is
    stripped of surrounding whitespace; a non-empty `input` joins the last user turn after a newline.

    \b
    Writes OUT/{train,val}.bin, .idx (dialog starts), .mask.bin (loss mask), .turns.idx (user-turn
    starts, where the trainer may begin a block; a system message stands in for the first user turn
    after it) and meta.json. Rows that cannot be used are skipped and counted by reason with file:line
    examples (invalid_json, not_an_object, missing_field, wrong_type, no_markers, markers_out_of_order,
    text_before_first_marker, history_not_ending_in_assistant_marker, empty_message, empty_reply,
    no_reply, turns_out_of_order, unknown_role, unknown_format, invalid_utf8, truncated_last_line,
    invalid_unicode, empty_file, compressed_file, too_large, duplicate); the run goes on. Fixed and kept, also counted:
    unanswered_last_turn_dropped (ShareGPT), bom_stripped, crlf_line_end, blank_line, no_final_newline.
    A JSON array that is cut off or not valid JSON gives its rows up to the damage; the rest (which
    cannot be trusted) is counted once, as invalid_json at its file:line.
    """
    from prep.recipe_vocab import recipe_tokenizer
    from prep.sft import run_sft

    run_sft(input_spec, out, tokenizer=recipe_tokenizer(recipe, tokenizer, out), system=system, val_fraction=val_fraction,
            workers=workers, shard=shard)
