"""``train pretrain``: next-token prediction from scratch on a `prep wiki` / `prep text` token folder."""

from __future__ import annotations

from train.stage import LMStage

PRETRAIN = LMStage(
    "pretrain", "pretrain", "prep wiki (or prep text)", needs_init=False, chat=False, turn_starts=False,
    help="Pretrain from scratch on a `prep wiki` / `prep text` token folder, or a weighted mixture of them.",
    make_summary="pretrain", make_data="data_bin/wiki",
)
