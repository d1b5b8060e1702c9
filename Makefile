# Set-up and the two commands a newcomer needs: `make demo` (main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all typecheck bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "tensorrt-stubs>=10.0"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/toma-export demo

# Two pytest-xdist workers (the CI machine has 2 cores; JOBS=N for more), each test file on one worker:
# module fixtures (artifact builds, servers) then run once, not once per worker.
JOBS ?= 2
XDIST := -n $(JOBS) --dist loadfile

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

typecheck: $(STAMP)
	$(BIN)/python -m mypy toma_export plugins

bench: $(STAMP)
	$(BIN)/python scripts/bench_block.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build *.egg-info
