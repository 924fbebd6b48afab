# phi-ray: the commands a newcomer needs. Everything installs into .venv from nothing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PRESET ?= tiny
PYTEST_ARGS ?=

.PHONY: demo test test-slow check-clients lint format bench install install-dev clean check-compat check-floors rehearse bench-scale check-vllm-app

# torch first, pinned: the CPU build is kept by the package's torch range, so pip does not
# pull the multi-GB CUDA wheels on machines without a GPU.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## demo: the tiny preset end to end on this machine (no GPU, no network)
demo: install
	$(BIN)/phi-ray run --preset $(PRESET)

## test: the test suite (pytest, real Ray, tiny models); `slow` tests are `make test-slow`
test: install-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## test-slow: the long tests (all eleven stages in one run, compiled step, s3 training, ablation)
test-slow: install-dev
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

## check-clients: lm-eval (local-completions) against a real `phi-ray serve` (minutes)
check-clients: install-dev
	PHI_RAY_CHECK_CLIENTS=1 $(BIN)/python -m pytest -m clients tests $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## check-compat: the exported model loads under transformers 4.57 with the same ids and
## logits as under 5.x (builds a cached venv on first use: ~2 min; then ~1 min)
check-compat: install-dev
	PHI_RAY_COMPAT=1 $(BIN)/python -m pytest tests/export/test_export_tf4.py $(PYTEST_ARGS)

## check-vllm-app: the vLLM application (Ray Serve LLM + classifier) built and served on a CPU
## with vLLM 0.29.0's wheel from a cached overlay, its LLMServer pending (no GPU; ~1 min)
VLLM_OVERLAY ?= $(VENV)/vllm-overlay
check-vllm-app: install-dev
	test -d $(VLLM_OVERLAY)/vllm || $(BIN)/pip install -q --no-deps --target $(VLLM_OVERLAY) \
	  vllm==0.29.0 'fastapi>=0.133,<0.137' cachetools cbor2 msgspec openai-harmony \
	  partial-json-parser py-cpuinfo pybase64 python-multipart pyzmq
	PYTHONPATH=$(VLLM_OVERLAY) $(BIN)/python -m pytest tests/serving/test_serving_vllm_ingress.py \
	  tests/serving/test_serving_vllm_app.py $(PYTEST_ARGS)

## check-floors: phi-ray's code at the pyproject floors of its key dependencies (a cached
## venv: ~15 min to build on first use, torch's floor being a CUDA wheel set; then ~4 min)
check-floors: install-dev
	PHI_RAY_FLOORS=1 $(BIN)/python -m pytest tests/floors $(PYTEST_ARGS)

## bench: each benchmark prints ratios against a baseline run in the same process
bench: install-dev
	$(BIN)/pip install -q -e '.[bench]'
	@set -e; for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

## bench-scale: `phi-ray run --to pack` on Stack-layout corpora 10x apart: driver peak RSS
## (sampled from outside) and seconds per file per stage (~20 min on 2 cores; run it alone)
bench-scale: install-dev
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

## rehearse: the tiny pipeline on a 3-node local Ray cluster, runs dir on a local S3 server
## (moto), a worker node killed mid-pretrain, a rerun that skips every stage, then
## `phi-ray serve` of the model in the bucket (~10 min; in CI)
rehearse: install-dev
	$(BIN)/python tests/rehearsal/rehearse.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
