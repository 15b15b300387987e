# The two commands of the README's Quick start: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/demo

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

# The shipped MNIST models: the mnist-fast cascade (16x16, then 32x32; a 10x10 grid, one
# column per class), then the strongest single-resolution plan the plan search found for
# mnist-base (DPM++ 2M, 5 NFE) on the same seeds, to compare the times.
demo: $(VENV)/.installed
	$(BIN)/lowdiff-sched sample --model mnist-fast --plan mnist-fast --class-labels 0-9 \
		--seeds 0-99 --batch 100 --out $(OUT) --overwrite
	$(BIN)/lowdiff-sched sample --model mnist-base --plan mnist-base-dpmpp2m-5 --class-labels 0-9 \
		--seeds 0-99 --batch 100 --out $(OUT)/baseline --overwrite

# The linter and the type checker first (config in pyproject.toml), then the suite.
test: $(VENV)/.installed-dev
	$(BIN)/ruff check lowdiff_sched
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
