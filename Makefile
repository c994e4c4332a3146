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
# The tokenizer of prep-wiki / prep-sft / prep-text / prep-pref: qwen2, or a cut vocabulary's folder (make vocab).
TOKENIZER ?= qwen2
# The recipe (common/recipes.py): seed (the reference, the default here) or modern (the recommended: the vocabulary
# cut to the pretraining corpus, qwen3 + Muon). `make all` defaults to modern.
RECIPE_ARG := --recipe "$${MK_RECIPE:-seed}"
# Extra torchrun options for several nodes, e.g. TORCHRUN_ARGS="--nnodes 2 --node_rank 0 --rdzv_endpoint host:29500"
TORCHRUN_ARGS ?= --standalone
LAUNCH := $(if $(filter 1,$(NPROC)),$(PY),$(BIN)/torchrun $$MK_TORCHRUN_ARGS --nproc_per_node "$$MK_NPROC")
CHECK_NPROC := case "$$MK_NPROC" in ''|*[!0-9]*|0*) echo "Error: NPROC must be a number of processes (1, 2, ...), not '$$MK_NPROC'" >&2; exit 2;; esac

# Values reach the programs byte for byte: a recipe never pastes a user's value into shell code (where
# quotes, `backquotes` and $VARS would be interpreted). Each value travels in an environment variable,
# taken verbatim from the command line (make itself would expand a `$` in it), and the recipe quotes
# it as "$$MK_NAME". ARGS is split into arguments by the program (shell-like quoting, nothing run or
# expanded): common/cli.py, make_args(). TORCHRUN_ARGS is split on spaces only.
verbatim = $(if $(filter command line environment,$(origin $(1))),$(value $(1)),$($(1)))
export MK_ARGS = $(call verbatim,ARGS)
export MK_NPROC = $(call verbatim,NPROC)
export MK_TORCHRUN_ARGS = $(call verbatim,TORCHRUN_ARGS)
export MK_TOKENIZER = $(call verbatim,TOKENIZER)
export MK_RECIPE = $(call verbatim,RECIPE)

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

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
prep-wiki: export MK_OUT = $(call verbatim,OUT)
prep-wiki: export MK_WIKI = $(call verbatim,WIKI)
prep-wiki: $(STAMP) ## tokenize wiki_zh: make prep-wiki WIKI=path/to/wiki_zh [OUT=data_bin/wiki] [TOKENIZER=qwen2|folder] [RECIPE=seed|modern]
	@test -n "$$MK_WIKI" || { echo "usage: make prep-wiki WIKI=path/to/wiki_zh [OUT=data_bin/wiki] [ARGS=...]"; exit 2; }
	$(PY) -m prep wiki "$$MK_WIKI" --out "$$MK_OUT" --tokenizer "$$MK_TOKENIZER" $(RECIPE_ARG)

prep-sft: OUT ?= data_bin/sft
prep-sft: export MK_OUT = $(call verbatim,OUT)
prep-sft: export MK_BELLE = $(call verbatim,BELLE)
prep-sft: $(STAMP) ## tokenize Belle dialogs: make prep-sft BELLE=file|folder|hub-name [OUT=data_bin/sft] [TOKENIZER=qwen2|folder] [RECIPE=seed|modern] [ARGS=...]
	@test -n "$$MK_BELLE" || { echo "usage: make prep-sft BELLE=path/or/BelleGroup/multiturn_chat_0.8M [OUT=data_bin/sft] [ARGS=...]"; exit 2; }
	$(PY) -m prep sft "$$MK_BELLE" --out "$$MK_OUT" --tokenizer "$$MK_TOKENIZER" $(RECIPE_ARG)

prep-text: OUT ?= data_bin/text
prep-text: export MK_OUT = $(call verbatim,OUT)
prep-text: export MK_SRC = $(call verbatim,SRC)
prep-text: $(STAMP) ## tokenize any corpus: make prep-text SRC=file|folder|owner/name [OUT=data_bin/text] [TOKENIZER=qwen2|folder] [RECIPE=seed|modern] [ARGS=...]
	@test -n "$$MK_SRC" || { echo 'usage: make prep-text SRC=file|folder|owner/name[:config][@split] [OUT=data_bin/text] [ARGS="--near-dedup ..."]'; exit 2; }
	$(PY) -m prep text "$$MK_SRC" --out "$$MK_OUT" --tokenizer "$$MK_TOKENIZER" $(RECIPE_ARG)

# Sharded prep (docs/shards.md): make prep-wiki WIKI=... OUT=data_bin/wiki.shards/shard-3 ARGS="--shard 3/8" per shard,
# then one merge. SHARDS is a folder of shard folders (or one shard).
merge: export MK_SHARDS = $(call verbatim,SHARDS)
merge: export MK_OUT = $(call verbatim,OUT)
merge: $(STAMP) ## merge shards (--shard I/N) into the unsharded folder: make merge SHARDS=folder-of-shards OUT=data_bin/wiki
	@test -n "$$MK_SHARDS" -a -n "$$MK_OUT" || { echo "usage: make merge SHARDS=data_bin/wiki.shards OUT=data_bin/wiki [ARGS=...]"; exit 2; }
	$(PY) -m prep merge "$$MK_SHARDS" --out "$$MK_OUT"

vocab: DATA ?= data_bin/wiki
vocab: SIZE ?= 32768
vocab: OUT ?= data_bin/vocab
vocab: export MK_DATA = $(call verbatim,DATA)
vocab: export MK_SIZE = $(call verbatim,SIZE)
vocab: export MK_OUT = $(call verbatim,OUT)
vocab: $(STAMP) ## cut Qwen2's vocabulary to a corpus: [DATA=data_bin/wiki] [SIZE=32768] [OUT=data_bin/vocab]
	$(PY) -m prep vocab "$$MK_DATA" --size "$$MK_SIZE" --out "$$MK_OUT"

# pretrain, sft, dpo: one target per stage, generated from the stage registry (train/stages/makefile.py)
include stages.mk

prep-pref: OUT ?= data_bin/pref
prep-pref: export MK_OUT = $(call verbatim,OUT)
prep-pref: export MK_PREF = $(call verbatim,PREF)
prep-pref: $(STAMP) ## tokenize preference pairs: make prep-pref PREF=file|folder|hub-name [OUT=data_bin/pref] [TOKENIZER=qwen2|folder] [RECIPE=seed|modern] [ARGS=--max-len N]
	@test -n "$$MK_PREF" || { echo "usage: make prep-pref PREF=file|folder|hub-name [OUT=data_bin/pref] [ARGS='--max-len 257']"; exit 2; }
	$(PY) -m prep pref "$$MK_PREF" --out "$$MK_OUT" --tokenizer "$$MK_TOKENIZER" $(RECIPE_ARG)

# The whole path in one command, resumable (train/pipeline_all.py): modern unless RECIPE=seed.
all: OUT ?= runs/all
all: export MK_OUT = $(call verbatim,OUT)
all: export MK_WIKI = $(call verbatim,WIKI)
all: export MK_BELLE = $(call verbatim,BELLE)
all: export MK_PREF = $(call verbatim,PREF)
all: export MK_HELDOUT = $(call verbatim,HELDOUT)
all: export MK_PRESET = $(call verbatim,PRESET)
all: $(STAMP) ## prep, pretrain, sft, dpo, evals, export, GGUF, report: make all WIKI=... BELLE=... [PREF=...] [RECIPE=modern|seed] [PRESET=mini] [OUT=runs/NAME] [HELDOUT=text]
	@test -n "$$MK_WIKI" -a -n "$$MK_BELLE" || { echo "usage: make all WIKI=path/to/wiki_zh BELLE=path/to/belle.json [PREF=...] [RECIPE=modern|seed] [PRESET=mini] [OUT=runs/NAME] [HELDOUT=held-out text] [ARGS='--steps 20']"; exit 2; }
	$(PY) -m train all --wiki "$$MK_WIKI" --belle "$$MK_BELLE" --recipe "$${MK_RECIPE:-modern}" --preset "$$MK_PRESET" \
		--out "$$MK_OUT" $${MK_PREF:+--pref "$$MK_PREF"} $${MK_HELDOUT:+--heldout "$$MK_HELDOUT"}

report: RUN ?= runs/dpo
report: export MK_RUN = $(call verbatim,RUN)
report: $(STAMP) ## a run and the runs it started from (pretrain -> sft -> dpo): [RUN=runs/dpo] [ARGS=...]
	$(PY) -m train report --lineage "$$MK_RUN"

sample: CKPT ?= runs/sft
sample: PROMPT ?= 数学是
sample: export MK_CKPT = $(call verbatim,CKPT)
sample: export MK_PROMPT = $(call verbatim,PROMPT)
sample: $(STAMP) ## generate: [CKPT=runs/sft] [PROMPT=数学是] [ARGS=...]
	$(PY) -m model sample --ckpt "$$MK_CKPT" --prompt "$$MK_PROMPT"

chat: CKPT ?= runs/sft
chat: export MK_CKPT = $(call verbatim,CKPT)
chat: $(STAMP) ## multi-turn chat in the terminal: [CKPT=runs/sft] [ARGS=--system ...]
	$(PY) -m model chat --ckpt "$$MK_CKPT"

serve: CKPT ?= runs/sft
serve: PORT ?= 8000
serve: HOST ?= 127.0.0.1
serve: export MK_CKPT = $(call verbatim,CKPT)
serve: export MK_PORT = $(call verbatim,PORT)
serve: export MK_HOST = $(call verbatim,HOST)
serve: $(STAMP) ## OpenAI-compatible API + chat page: [CKPT=runs/sft] [PORT=8000] [HOST=127.0.0.1] [ARGS=...]
	$(PY) -m model serve --ckpt "$$MK_CKPT" --port "$$MK_PORT" --host "$$MK_HOST"

export: CKPT ?= runs/sft
export: OUT ?= $(CKPT)/$(if $(filter 1,$(ADAPTER)),hf-adapter,hf)
export: export MK_CKPT = $(call verbatim,CKPT)
export: export MK_OUT = $(call verbatim,OUT)
export: export MK_ADAPTER = $(call verbatim,ADAPTER)
export: $(STAMP) ## Hugging Face folder (a LoRA run merged): [CKPT=runs/sft] [OUT=CKPT/hf] [ADAPTER=1: PEFT adapters]
	$(PY) -m model export --ckpt "$$MK_CKPT" --out "$$MK_OUT" --adapter "$$MK_ADAPTER"

# GGUF for llama.cpp / Ollama / LM Studio.
gguf: CKPT ?= runs/sft
gguf: TYPE ?= f16
gguf: export MK_CKPT = $(call verbatim,CKPT)
gguf: export MK_TYPE = $(call verbatim,TYPE)
gguf: export MK_OUT = $(call verbatim,OUT)
gguf: $(STAMP) ## GGUF file for llama.cpp / LM Studio: [CKPT=runs/sft] [TYPE=f16|q8_0|f32] [OUT=CKPT/model-TYPE.gguf]
	$(PY) -m model gguf --ckpt "$$MK_CKPT" --type "$$MK_TYPE" $${MK_OUT:+--out "$$MK_OUT"}

ollama: CKPT ?= runs/sft
ollama: TYPE ?= f16
ollama: export MK_CKPT = $(call verbatim,CKPT)
ollama: export MK_TYPE = $(call verbatim,TYPE)
ollama: $(STAMP) ## GGUF + Ollama Modelfile beside it, then prints `ollama create`: [CKPT=runs/sft] [TYPE=f16]
	$(PY) -m model ollama --ckpt "$$MK_CKPT" --type "$$MK_TYPE"

# llama-cpp-python beside the venv, only for gguf-check: pip compiles llama.cpp from source (minutes, once;
# portable CPU code, without the multimodal library that these checks do not use).
LLAMA := $(VENV)/llama
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
$(LLAMA)/.installed: $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" $(BIN)/pip install --disable-pip-version-check --no-deps --target $(LLAMA) \
		"$(LLAMA_CPP_PYTHON)" "diskcache>=5.6"
	touch $@

gguf-check: $(STAMP) $(LLAMA)/.installed ## llama.cpp (llama-cpp-python) runs our GGUF: tokens, logits, greedy text, chat
	HF_HUB_OFFLINE=1 PYTHONPATH=$(LLAMA) PYTEST_ADDOPTS="$$MK_ARGS" MK_ARGS= $(PY) -m pytest -q -s tests/model/export/test_gguf_llama_cpp.py

eval: CKPT ?= runs/pretrain
eval: DATA ?= data_bin/wiki
eval: export MK_CKPT = $(call verbatim,CKPT)
eval: export MK_DATA = $(call verbatim,DATA)
eval: $(STAMP) ## loss / perplexity / bits per byte on the val split: [CKPT=...] [DATA=folder or mixture]
	$(PY) -m train eval --ckpt "$$MK_CKPT" --data "$$MK_DATA"

harness: CKPT ?= runs/sft
harness: TASKS ?= ceval-valid,cmmlu
harness: export MK_CKPT = $(call verbatim,CKPT)
harness: export MK_TASKS = $(call verbatim,TASKS)
harness: export MK_LIMIT = $(call verbatim,LIMIT)
harness: $(STAMP) ## C-Eval/CMMLU via lm-eval: [CKPT=runs/sft] [TASKS=ceval-valid,cmmlu] [LIMIT=N] [ARGS=...]
	@$(PY) -c 'import lm_eval' 2>/dev/null || { echo "installing the eval extra (lm-eval) once ..."; \
		$(BIN)/pip install --quiet --disable-pip-version-check -e '.[eval]'; }
	$(PY) -m model harness --ckpt "$$MK_CKPT" --tasks "$$MK_TASKS" $${MK_LIMIT:+--limit "$$MK_LIMIT"}

bpb: export MK_MODEL = $(call verbatim,MODEL)
bpb: export MK_TEXT = $(call verbatim,TEXT)
bpb: $(STAMP) ## bits per byte on raw text: MODEL=run-or-HF-folder TEXT=file|folder|jsonl [ARGS="--model other"]
	@test -n "$$MK_MODEL" -a -n "$$MK_TEXT" || { echo "usage: make bpb MODEL=runs/pretrain|hf-folder TEXT=file|folder|wiki-shard [ARGS='--model another --stride 128']"; exit 2; }
	$(PY) -m model bpb --model "$$MK_MODEL" --text "$$MK_TEXT"

select: KEEP ?= 0.5
select: export MK_DATA = $(call verbatim,DATA)
select: export MK_TEACHER = $(call verbatim,TEACHER)
select: export MK_REF = $(call verbatim,REF)
select: export MK_KEEP = $(call verbatim,KEEP)
select: export MK_OUT = $(call verbatim,OUT)
select: $(STAMP) ## keep documents by teacher minus reference score: DATA=.. TEACHER=.. REF=.. OUT=.. [KEEP=0.5] [ARGS=--scores ..]
	@test -n "$$MK_DATA" -a -n "$$MK_OUT" || { echo "usage: make select DATA=data_bin/wiki TEACHER=hf-folder|Qwen/Qwen2.5-0.5B REF=runs/pretrain OUT=data_bin/wiki_sel [KEEP=0.5] [ARGS='--scores data_bin/wiki_sel']"; exit 2; }
	$(PY) -m model select --data "$$MK_DATA" --out "$$MK_OUT" --keep "$$MK_KEEP" $${MK_TEACHER:+--teacher "$$MK_TEACHER"} $${MK_REF:+--ref "$$MK_REF"}

teach: export MK_DATA = $(call verbatim,DATA)
teach: export MK_TEACHER = $(call verbatim,TEACHER)
teach: export MK_OUT = $(call verbatim,OUT)
teach: $(STAMP) ## store a teacher's sparse targets for kd_weight: DATA=.. TEACHER=.. OUT=.. [ARGS="--k 12 --temperature 1"]
	@test -n "$$MK_DATA" -a -n "$$MK_TEACHER" -a -n "$$MK_OUT" || { echo "usage: make teach DATA=data_bin/wiki TEACHER=hf-folder|Qwen/Qwen2.5-0.5B|runs/teacher OUT=data_bin/wiki_teach [ARGS='--k 12 --temperature 1.0']"; exit 2; }
	$(PY) -m model teach --data "$$MK_DATA" --teacher "$$MK_TEACHER" --out "$$MK_OUT"

plan: export MK_PRESET = $(call verbatim,PRESET)
plan: export MK_GPU_MEM = $(call verbatim,GPU_MEM)
plan: $(STAMP) ## memory of a training step, largest micro-batch: [PRESET=mini] [GPU_MEM=24GB] [NPROC=N] [ARGS=...]
	$(PY) -m train plan --preset "$$MK_PRESET" --nproc "$$MK_NPROC" --gpu-mem "$$MK_GPU_MEM"

# The demo is `make all` on the bundled sample (sample_data/README.md): 2 MB of real Chinese Wikipedia, 48
# dialogs, 51 preference pairs, and 150 held-out articles for bits per byte. The modern recipe with a
# vocabulary cut to 8,192 ids learns most in its time here (docs/recipe.md, "The demo's figures").
DEMO_RUNS := runs/demo
SUB_MAKE  := $(MAKE) --no-print-directory
DEMO_ALL  := --vocab-size 8192 --val-fraction 0.05 --set pretrain.batch_size=16 --set pretrain.micro_batch_size=16 \
	--set pretrain.max_steps=500 --set pretrain.eval_every=100 --set pretrain.ckpt_every=250
# Seeded, so the demo prints the same text every time; mild sampling with a repetition penalty.
DEMO_SAMPLING := --max-new-tokens 40 --temperature 0.7 --top-k 20 --repetition-penalty 1.2 --seed 1337
demo: $(STAMP) ## the whole pipeline (make all) on the bundled sample_data/: minutes on a 2-core CPU
	rm -rf $(DEMO_RUNS)
	$(SUB_MAKE) all WIKI=sample_data/wiki_zh_real BELLE=sample_data/belle/multiturn_chat.json \
		PREF=sample_data/pref/dpo_zh.jsonl HELDOUT=sample_data/heldout/wiki_zh_heldout.jsonl \
		RECIPE=modern PRESET=tiny OUT=$(DEMO_RUNS) ARGS="$(DEMO_ALL)"
	@printf '\n== the pretrained model continues 数学是 ...\n'
	$(SUB_MAKE) sample CKPT=$(DEMO_RUNS)/pretrain PROMPT=数学是 ARGS="$(DEMO_SAMPLING)"
	@printf '\n== one chat turn with the final (SFT + DPO) model\n'
	$(SUB_MAKE) chat CKPT=$(DEMO_RUNS)/dpo ARGS="--message 数学是什么？ $(DEMO_SAMPLING)"
	@printf '%s\n' "Everything is in $(DEMO_RUNS) (report.md, hf/README.md, model-f16.gguf). Next: make chat CKPT=$(DEMO_RUNS)/dpo" \
	  "The real data, the same command: make all WIKI=path/to/wiki_zh BELLE=path/to/belle.json (docs/recipe.md)."

test: $(STAMP) $(TF4)/.installed ## lint and run the test suite (offline, CPU, a few minutes)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 PYTEST_ADDOPTS="$$MK_ARGS" MK_ARGS= $(PY) -m pytest -q

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

demo-dpo: $(STAMP) ## make demo now ends with DPO (runs/demo/dpo): one more chat turn with it, and the lineage
	@test -f $(DEMO_RUNS)/dpo/checkpoint/model.json || { echo "make demo trains the DPO stage itself now: run make demo first"; exit 2; }
	$(SUB_MAKE) chat CKPT=$(DEMO_RUNS)/dpo ARGS="--message 你好 $(DEMO_SAMPLING)"
	@$(PY) -m train report --lineage $(DEMO_RUNS)/dpo

bench: $(STAMP) ## benchmarks on the sample data, printing figures and ratios
	$(PY) -m bench.prep
	$(PY) -m bench.train
	$(PY) -m bench.dpo
	$(PY) -m bench.generate
	$(PY) -m bench.serve
	$(PY) -m bench.vocab

recipe: export MK_DATA = $(call verbatim,DATA)
recipe: $(STAMP) ## seed vs modern recipe (gpt2/qwen3 x AdamW/Muon, lr sweeps): make recipe DATA=data_bin/wiki [ARGS=...]
	@test -n "$$MK_DATA" || { echo "usage: make recipe DATA=token_folder [ARGS=...]"; exit 2; }
	$(PY) -m bench.recipe --data "$$MK_DATA"

gpu-check: $(STAMP) ## on a CUDA machine: mini in both archs, bf16 + compile, tokens/s, MFU, memory, loss, serving
	$(PY) -m bench.gpu_check

clean: ## remove .venv and caches (keeps data_bin/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
