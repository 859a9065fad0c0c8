# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck venv bench bench-env bench-full clean gpu-check

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kd-toolkit pipeline --output-dir runs/demo

test: lint typecheck
	$(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check kd_toolkit tests benchmarks examples knowledge_distilation

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The peer framework of protocol 5 is installed into the benchmark environment only (not a project dependency);
# if it can't be installed, that protocol is skipped with a message.
bench-env: $(STAMP)
	$(PY) -m pip install -q torchdistill || echo "torchdistill could not be installed: protocol 5 will be skipped"

bench: bench-env
	$(PY) -m benchmarks --suite quick

# the full suite writes benchmarks/results/latest/ (untracked); add --readme to publish the figures (tracked files)
bench-full: bench-env
	$(PY) -m benchmarks --suite full

clean:
	rm -rf runs lightning_logs .pytest_cache

gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check
