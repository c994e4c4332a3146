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
prep-wiki: export MK_OUT = $(call verbatim,OUT)
prep-wiki: export MK_WIKI = $(call verbatim,WIKI)
prep-wiki: $(STAMP) ## tokenize wiki_zh: make prep-wiki WIKI=path/to/wiki_zh [OUT=data_bin/wiki] [TOKENIZER=qwen2|folder]
	@test -n "$$MK_WIKI" || { echo "usage: make prep-wiki WIKI=path/to/wiki_zh [OUT=data_bin/wiki] [ARGS=...]"; exit 2; }
	$(PY) -m prep wiki "$$MK_WIKI" --out "$$MK_OUT" --tokenizer "$$MK_TOKENIZER"

prep-sft: OUT ?= data_bin/sft
prep-sft dpo: export MK_OUT = $(call verbatim,OUT)
prep-sft: export MK_BELLE = $(call verbatim,BELLE)
prep-sft: $(STAMP) ## tokenize Belle dialogs: make prep-sft BELLE=file|folder|hub-name [OUT=data_bin/sft] [TOKENIZER=qwen2|folder] [ARGS=...]
	@test -n "$$MK_BELLE" || { echo "usage: make prep-sft BELLE=path/or/BelleGroup/multiturn_chat_0.8M [OUT=data_bin/sft] [ARGS=...]"; exit 2; }
	$(PY) -m prep sft "$$MK_BELLE" --out "$$MK_OUT" --tokenizer "$$MK_TOKENIZER"

prep-text: OUT ?= data_bin/text
prep-text: export MK_OUT = $(call verbatim,OUT)
prep-text: export MK_SRC = $(call verbatim,SRC)
prep-text: $(STAMP) ## tokenize any corpus: make prep-text SRC=file|folder|owner/name [OUT=data_bin/text] [TOKENIZER=qwen2|folder] [ARGS=...]
	@test -n "$$MK_SRC" || { echo 'usage: make prep-text SRC=file|folder|owner/name[:config][@split] [OUT=data_bin/text] [ARGS="--near-dedup ..."]'; exit 2; }
	$(PY) -m prep text "$$MK_SRC" --out "$$MK_OUT" --tokenizer "$$MK_TOKENIZER"

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

pretrain: DATA ?= data_bin/wiki
pretrain: OUT ?= runs/pretrain
pretrain: export MK_DATA = $(call verbatim,DATA)
pretrain: export MK_OUT = $(call verbatim,OUT)
pretrain: export MK_PRESET = $(call verbatim,PRESET)
pretrain: $(STAMP) ## pretrain: [PRESET=mini] [DATA=data_bin/wiki | "a:0.3,b:0.7"] [OUT=runs/pretrain] [NPROC=N] [ARGS=...]
	@$(CHECK_NPROC)
	$(LAUNCH) -m train pretrain --preset "$$MK_PRESET" --data "$$MK_DATA" --out "$$MK_OUT"

sft: DATA ?= data_bin/sft
sft: INIT ?= runs/pretrain
sft: OUT ?= runs/sft
sft dpo: export MK_DATA = $(call verbatim,DATA)
sft dpo: export MK_INIT = $(call verbatim,INIT)
sft dpo: export MK_OUT = $(call verbatim,OUT)
sft dpo: export MK_PRESET = $(call verbatim,PRESET)
sft: $(STAMP) ## fine-tune: [PRESET=mini] [DATA=data_bin/sft] [INIT=runs/pretrain] [OUT=runs/sft] [NPROC=N] [ARGS=...]
	@$(CHECK_NPROC)
	$(LAUNCH) -m train sft --preset "$$MK_PRESET" --data "$$MK_DATA" --init "$$MK_INIT" --out "$$MK_OUT"

prep-pref: OUT ?= data_bin/pref
prep-pref: export MK_OUT = $(call verbatim,OUT)
prep-pref: export MK_PREF = $(call verbatim,PREF)
prep-pref: $(STAMP) ## tokenize preference pairs: make prep-pref PREF=file|folder|hub-name [OUT=data_bin/pref] [TOKENIZER=qwen2|folder] [ARGS=--max-len N]
	@test -n "$$MK_PREF" || { echo "usage: make prep-pref PREF=file|folder|hub-name [OUT=data_bin/pref] [ARGS='--max-len 257']"; exit 2; }
	$(PY) -m prep pref "$$MK_PREF" --out "$$MK_OUT" --tokenizer "$$MK_TOKENIZER"

dpo: DATA ?= data_bin/pref
dpo: INIT ?= runs/sft
dpo: OUT ?= runs/dpo
dpo: $(STAMP) ## preference-tune: [PRESET=mini] [DATA=data_bin/pref] [INIT=runs/sft] [OUT=runs/dpo] [NPROC=N] [ARGS="--set loss=simpo"]
	@$(CHECK_NPROC)
	$(LAUNCH) -m train dpo --preset "$$MK_PRESET" --data "$$MK_DATA" --init "$$MK_INIT" --out "$$MK_OUT"

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
export: OUT ?= $(CKPT)/hf
export: export MK_CKPT = $(call verbatim,CKPT)
export: export MK_OUT = $(call verbatim,OUT)
export: $(STAMP) ## Hugging Face folder: [CKPT=runs/sft] [OUT=CKPT/hf]
	$(PY) -m model export --ckpt "$$MK_CKPT" --out "$$MK_OUT"

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
	HF_HUB_OFFLINE=1 PYTEST_ADDOPTS="$$MK_ARGS" MK_ARGS= $(PY) -m pytest -q

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

# After `make demo`: a short DPO stage on sample_data/pref, from the demo's SFT model (about 1-2 minutes).
demo-dpo: $(STAMP) ## after make demo: DPO on the bundled preference pairs, then a chat turn and the lineage
	@test -f $(DEMO_RUNS)/sft/checkpoint/model.json || { echo "make demo-dpo starts from the demo's SFT model: run make demo first"; exit 2; }
	rm -rf $(DEMO_DATA)/pref $(DEMO_RUNS)/dpo
	@printf '\n== 1/3  prep-pref: sample_data/pref -> $(DEMO_DATA)/pref (dialogs of at most 65 tokens: block 64 + 1)\n'
	$(SUB_MAKE) prep-pref PREF=sample_data/pref/dpo_zh.jsonl OUT=$(DEMO_DATA)/pref ARGS="--val-fraction 0.1 --max-len 65"
	@printf '\n== 2/3  dpo: prefer the chosen replies (reference: the SFT model, scored once)\n'
	$(SUB_MAKE) dpo PRESET=tiny DATA=$(DEMO_DATA)/pref INIT=$(DEMO_RUNS)/sft OUT=$(DEMO_RUNS)/dpo ARGS=
	@printf '\n== 3/3  one chat turn with the preference-tuned model\n'
	$(SUB_MAKE) chat CKPT=$(DEMO_RUNS)/dpo ARGS="--message 数学是什么？ $(DEMO_SAMPLING)"
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
