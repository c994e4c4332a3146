"""``train sft``: supervised fine-tuning on `prep sft` dialogs, the loss on the assistant's replies only."""

from __future__ import annotations

from train.stage import LMStage

# A pretrained model: a short warmup, a learning rate in the usual 1e-5..5e-5 band for the model of record,
# and no weight decay pulling the pretrained weights towards zero. The tiny size (`make demo`) learns its
# few dialogs at a higher rate in 100 steps. lora_lr: a LoRA run's rate, about 10x full fine-tuning's ("LoRA
# Without Regret"); tiny's 5e-3 was the best of 2e-3, 5e-3 and 1e-2 on the Belle samples (docs/lora.md).
OVERLAY = {
    "*": dict(lr=3e-5, lora_lr=3e-4, warmup_steps=50, weight_decay=0.0, max_steps=2000, batch_size=64, eval_every=100,
              ckpt_every=500, sample_prompt="什么是数学？"),  # SFT samples wrap the prompt as a user turn
    "tiny": dict(lr=5e-4, lora_lr=5e-3, warmup_steps=10, batch_size=8, max_steps=100, eval_every=50, ckpt_every=100),
}

SFT = LMStage(
    "sft", "sft", "prep sft", needs_init=True, chat=True, turn_starts=True,
    help="Fine-tune on a `prep sft` token folder or a mixture of them (loss on assistant replies only), from "
         "--init.\n\nThe model comes from --init (its architecture and every field but the training knobs); "
         "the preset's size gives the schedule, with SFT's own rates.",
    init_help="pretraining run (or checkpoint) folder whose weights SFT starts from",
    overlay=OVERLAY, make_summary="fine-tune", make_data="data_bin/sft", make_init="runs/pretrain",
)
