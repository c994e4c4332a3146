"""The ``python -m prep pref`` command (registered in `prep.cli`)."""

from __future__ import annotations

from pathlib import Path

import click

from common.cli import one_line_errors
from prep.cli_common import prep_options
from prep.pref import DEFAULT_MAX_LEN


@click.command()
@click.argument("input_spec", metavar="INPUT")
@click.option("--out", type=click.Path(path_type=Path), default=Path("data_bin/pref"), show_default=True,
              help="Token folder to write (replaced only when the new one is complete).")
@prep_options
@click.option("--max-len", type=click.IntRange(min=16), default=DEFAULT_MAX_LEN, show_default=True,
              help="Most tokens of each dialog of a pair: the training block_size + 1 (mini: 256 + 1). Longer "
              "pairs lose their oldest turns; a pair whose last question and reply still do not fit is skipped.")
@one_line_errors
def pref(input_spec: str, out: Path, tokenizer: str, recipe: str, vocab_size: int | None, val_fraction: float,
         workers: int | None, shard, max_len: int) -> None:
    """Tokenize preference pairs (a prompt, a chosen and a rejected reply) for `train dpo`.

    \b
    INPUT is a file, a folder (every *.json / *.jsonl at any depth) or a Hugging Face dataset name.
    Formats, detected per file from its first rows (a file in none of them stops the run):
      sharegpt_pref  {"conversations": [{"from": "system"|"human"|"gpt", "value"}, ...],
                      "chosen": "..." or {"from": "gpt", "value"}, "rejected": same}  (LLaMA-Factory)
      trl            {"prompt": "..." or [{"role", "content"}], "chosen": "..." or [...], "rejected": ...}
      minimind       {"chosen": [{"role", "content"}, ...], "rejected": [...]}  (same prompt, last reply differs)
      reward         {"system", "history": [[q, a], ...], "question", "response_chosen", "response_rejected"}
                     (MedicalGPT)

    \b
    Each pair is one document of two ChatML dialogs sharing the prompt: prompt + chosen reply, then
    prompt + rejected reply, each closed by <|im_end|>\\n<|endoftext|>. Loss mask: 1 on the two final
    replies and their <|im_end|> only. OUT/{split}.turns.idx holds where each of the two dialogs starts.
    Skipped and counted by reason: empty_reply, identical_replies, too_long, no_prompt, no_reply,
    prompts_differ, turns_out_of_order, empty_message, unknown_role, missing_field, wrong_type,
    invalid_json, duplicate, ...; repaired and counted: oldest_turns_dropped (per turn pair dropped).
    """
    from prep.pref import run_pref
    from prep.recipe_vocab import recipe_tokenizer

    run_pref(input_spec, out, tokenizer=recipe_tokenizer(recipe, tokenizer, out), max_len=max_len,
             val_fraction=val_fraction, workers=workers, shard=shard)
