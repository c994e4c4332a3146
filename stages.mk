# The stages' targets, generated from the stage registry (train/stages/): do not edit; run
#   .venv/bin/python -m train.stages.makefile > stages.mk

pretrain: DATA ?= data_bin/wiki
pretrain: OUT ?= runs/pretrain
pretrain: export MK_DATA = $(call verbatim,DATA)
pretrain: export MK_OUT = $(call verbatim,OUT)
pretrain: export MK_PRESET = $(call verbatim,PRESET)
pretrain: $(STAMP) ## pretrain: [PRESET=mini] [RECIPE=seed|modern] [DATA=data_bin/wiki] [OUT=runs/pretrain] [NPROC=N] [ARGS=...]
	@$(CHECK_NPROC)
	$(LAUNCH) -m train pretrain --preset "$$MK_PRESET" --data "$$MK_DATA" --out "$$MK_OUT" $(RECIPE_ARG)

sft: DATA ?= data_bin/sft
sft: INIT ?= runs/pretrain
sft: OUT ?= runs/sft
sft: export MK_DATA = $(call verbatim,DATA)
sft: export MK_INIT = $(call verbatim,INIT)
sft: export MK_OUT = $(call verbatim,OUT)
sft: export MK_PRESET = $(call verbatim,PRESET)
sft: $(STAMP) ## fine-tune: [PRESET=mini] [RECIPE=seed|modern] [DATA=data_bin/sft] [INIT=runs/pretrain] [OUT=runs/sft] [NPROC=N] [ARGS=...]
	@$(CHECK_NPROC)
	$(LAUNCH) -m train sft --preset "$$MK_PRESET" --data "$$MK_DATA" --init "$$MK_INIT" --out "$$MK_OUT" $(RECIPE_ARG)

dpo: DATA ?= data_bin/pref
dpo: INIT ?= runs/sft
dpo: OUT ?= runs/dpo
dpo: export MK_DATA = $(call verbatim,DATA)
dpo: export MK_INIT = $(call verbatim,INIT)
dpo: export MK_OUT = $(call verbatim,OUT)
dpo: export MK_PRESET = $(call verbatim,PRESET)
dpo: $(STAMP) ## preference-tune: [PRESET=mini] [RECIPE=seed|modern] [DATA=data_bin/pref] [INIT=runs/sft] [OUT=runs/dpo] [NPROC=N] [ARGS=...]
	@$(CHECK_NPROC)
	$(LAUNCH) -m train dpo --preset "$$MK_PRESET" --data "$$MK_DATA" --init "$$MK_INIT" --out "$$MK_OUT" $(RECIPE_ARG)
