# Entry points of the Chinese mini-LLM pipeline. `make help` lists them.
# Every target that runs Python first builds .venv (once) from pyproject.toml.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed

# Common knobs (override on the command line: make pretrain PRESET=tiny ARGS="--max-steps 200").
PRESET ?= mini
ARGS   ?=
NPROC  ?= 1
# Extra torchrun options for several nodes, e.g. TORCHRUN_ARGS="--nnodes 2 --node_rank 0 --rdzv_endpoint host:29500"
TORCHRUN_ARGS ?= --standalone
LAUNCH := $(if $(filter 1,$(NPROC)),$(PY),$(BIN)/torchrun $(TORCHRUN_ARGS) --nproc_per_node $(NPROC))

.DEFAULT_GOAL := help
.PHONY: help setup prep-wiki prep-sft pretrain sft sample chat export gguf ollama gguf-check eval demo test lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python >= 3.10 is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# transformers 4.x beside the venv's 5.x, only so the tests can prove exported tokenizers load in both.
TF4 := $(VENV)/tf4
$(TF4)/.installed: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target $(TF4) \
		"transformers>=4.45,<5" "tokenizers>=0.22,<0.23" "huggingface_hub>=0.34,<1"
	touch $@

setup: $(STAMP) ## create .venv and install the dependencies (the other targets do this themselves)

prep-wiki: OUT ?= data_bin/wiki
prep-wiki: $(STAMP) ## tokenize wiki_zh: make prep-wiki WIKI=path/to/wiki_zh [OUT=data_bin/wiki]
	@test -n "$(WIKI)" || { echo "usage: make prep-wiki WIKI=path/to/wiki_zh [OUT=data_bin/wiki] [ARGS=...]"; exit 2; }
	$(PY) -m prep wiki "$(WIKI)" --out "$(OUT)" $(ARGS)

prep-sft: OUT ?= data_bin/sft
prep-sft: $(STAMP) ## tokenize Belle dialogs: make prep-sft BELLE=file|folder|hub-name [OUT=data_bin/sft]
	@test -n "$(BELLE)" || { echo "usage: make prep-sft BELLE=path/or/BelleGroup/multiturn_chat_0.8M [OUT=data_bin/sft] [ARGS=...]"; exit 2; }
	$(PY) -m prep sft "$(BELLE)" --out "$(OUT)" $(ARGS)

pretrain: DATA ?= data_bin/wiki
pretrain: OUT ?= runs/pretrain
pretrain: $(STAMP) ## pretrain: [PRESET=mini] [DATA=data_bin/wiki] [OUT=runs/pretrain] [NPROC=N] [ARGS=...]
	$(LAUNCH) -m train pretrain --preset $(PRESET) --data "$(DATA)" --out "$(OUT)" $(ARGS)

sft: DATA ?= data_bin/sft
sft: INIT ?= runs/pretrain
sft: OUT ?= runs/sft
sft: $(STAMP) ## fine-tune: [PRESET=mini] [DATA=data_bin/sft] [INIT=runs/pretrain] [OUT=runs/sft] [NPROC=N]
	$(LAUNCH) -m train sft --preset $(PRESET) --data "$(DATA)" --init "$(INIT)" --out "$(OUT)" $(ARGS)

sample: CKPT ?= runs/sft
sample: PROMPT ?= 数学是
sample: $(STAMP) ## generate: [CKPT=runs/sft] [PROMPT=数学是] [ARGS=...]
	$(PY) -m model sample --ckpt "$(CKPT)" --prompt "$(PROMPT)" $(ARGS)

chat: CKPT ?= runs/sft
chat: $(STAMP) ## multi-turn chat in the terminal: [CKPT=runs/sft] [ARGS=--system ...]
	$(PY) -m model chat --ckpt "$(CKPT)" $(ARGS)

export: CKPT ?= runs/sft
export: OUT ?= $(CKPT)/hf
export: $(STAMP) ## Hugging Face folder: [CKPT=runs/sft] [OUT=CKPT/hf]
	$(PY) -m model export --ckpt "$(CKPT)" --out "$(OUT)" $(ARGS)

# GGUF for llama.cpp / Ollama / LM Studio. Values reach the program through the environment, byte for byte.
gguf: export CKPT ?= runs/sft
gguf: export TYPE ?= f16
gguf: export OUT ?=
gguf: $(STAMP) ## GGUF file for llama.cpp / LM Studio: [CKPT=runs/sft] [TYPE=f16|q8_0|f32] [OUT=CKPT/model-TYPE.gguf]
	$(PY) -m model gguf --ckpt "$$CKPT" --type "$$TYPE" $${OUT:+--out "$$OUT"}

ollama: export CKPT ?= runs/sft
ollama: export TYPE ?= f16
ollama: $(STAMP) ## GGUF + Ollama Modelfile beside it, then prints `ollama create`: [CKPT=runs/sft] [TYPE=f16]
	$(PY) -m model ollama --ckpt "$$CKPT" --type "$$TYPE"

# llama-cpp-python beside the venv, only for gguf-check: pip compiles llama.cpp from source (minutes, once;
# portable CPU code, without the multimodal library that these checks do not use).
LLAMA := $(VENV)/llama
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
$(LLAMA)/.installed: $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" $(BIN)/pip install --disable-pip-version-check --no-deps --target $(LLAMA) \
		"$(LLAMA_CPP_PYTHON)" "diskcache>=5.6"
	touch $@

gguf-check: $(STAMP) $(LLAMA)/.installed ## llama.cpp (llama-cpp-python) runs our GGUF: tokens, logits, greedy text, chat
	HF_HUB_OFFLINE=1 PYTHONPATH=$(LLAMA) $(PY) -m pytest -q -s tests/model/test_gguf_llama_cpp.py $(ARGS)

eval: CKPT ?= runs/pretrain
eval: DATA ?= data_bin/wiki
eval: $(STAMP) ## loss / perplexity / bits per byte on the val split: [CKPT=...] [DATA=...]
	$(PY) -m train eval --ckpt "$(CKPT)" --data "$(DATA)" $(ARGS)

# The demo is the real pipeline, run with the same targets a user runs, on sample_data/.
DEMO_DATA := data_bin/demo
DEMO_RUNS := runs/demo
SUB_MAKE  := $(MAKE) --no-print-directory
# Seeded, so the demo prints the same text every time. Greedy decoding of a model this young only
# repeats one token; mild sampling with a repetition penalty shows what it has picked up.
DEMO_SAMPLING := --max-new-tokens 40 --temperature 0.7 --top-k 20 --repetition-penalty 1.2 --seed 1337
demo: $(STAMP) ## the whole pipeline on the bundled sample_data/: ~6-9 minutes on a 2-core CPU
	rm -rf $(DEMO_DATA) $(DEMO_RUNS)
	@printf '\n== 1/6  prep-wiki: sample_data/wiki_zh -> $(DEMO_DATA)/wiki\n'
	$(SUB_MAKE) prep-wiki WIKI=sample_data/wiki_zh OUT=$(DEMO_DATA)/wiki ARGS="--val-fraction 0.1"
	@printf '\n== 2/6  prep-sft: sample_data/belle -> $(DEMO_DATA)/sft\n'
	$(SUB_MAKE) prep-sft BELLE=sample_data/belle/multiturn_chat.json OUT=$(DEMO_DATA)/sft ARGS="--val-fraction 0.1"
	@printf '\n== 3/6  pretrain the tiny preset (2 layers x 128, ~100k tokens; a few minutes)\n'
	$(SUB_MAKE) pretrain PRESET=tiny DATA=$(DEMO_DATA)/wiki OUT=$(DEMO_RUNS)/pretrain ARGS=
	@printf '\n== 4/6  sft: fine-tune it on the dialogs (loss on assistant replies only)\n'
	$(SUB_MAKE) sft PRESET=tiny DATA=$(DEMO_DATA)/sft INIT=$(DEMO_RUNS)/pretrain OUT=$(DEMO_RUNS)/sft ARGS=
	@printf '\n== 5/6  sample the base model: 数学是 ...\n'
	$(SUB_MAKE) sample CKPT=$(DEMO_RUNS)/pretrain PROMPT=数学是 ARGS="$(DEMO_SAMPLING)"
	@printf '\n== 6/6  one chat turn with the fine-tuned model\n'
	$(SUB_MAKE) chat CKPT=$(DEMO_RUNS)/sft ARGS="--message 数学是什么？ $(DEMO_SAMPLING)"
	@printf '\n== Done. What the runs learned, and where everything is:\n'
	@$(PY) -m train report $(DEMO_RUNS)/pretrain $(DEMO_RUNS)/sft
	@printf '%s\n' \
	  "Token folders: $(DEMO_DATA)/wiki, $(DEMO_DATA)/sft  (look inside: $(PY) -m prep inspect $(DEMO_DATA)/sft --doc 0)" \
	  "A few minutes on ~10k tokens teach a 2-layer model the sample's characters and common words, not" \
	  "facts: expect Chinese-looking text that echoes the sample, not answers. See README, 'What the demo shows'." \
	  "Next: make chat CKPT=$(DEMO_RUNS)/sft   |   make export CKPT=$(DEMO_RUNS)/sft   |   the real data: README."

test: $(STAMP) $(TF4)/.installed ## lint and run the test suite (offline, CPU, a few minutes)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

bench: $(STAMP) ## benchmarks on the sample data, printing figures and ratios
	$(PY) bench/prep.py $(ARGS)
	$(PY) bench/train.py $(ARGS)
	$(PY) bench/generate.py $(ARGS)

clean: ## remove .venv and caches (keeps data_bin/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
