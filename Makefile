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

# The shipped 64x64 emoji models: the emoji-fast cascade (16x16, 32x32, then 64x64; a 9x9
# grid, one column per category), then the strongest single-resolution plan the plan search
# found for emoji-base at its quality (DPM++ 2M, 5 NFE) on the same seeds, to compare the times.
demo: $(VENV)/.installed
	$(BIN)/lowdiff-sched sample --model emoji-fast --plan emoji-fast --class-labels 0-8 \
		--seeds 0-80 --batch 81 --out $(OUT) --overwrite
	$(BIN)/lowdiff-sched sample --model emoji-base --plan emoji-base-dpmpp2m-5 --class-labels 0-8 \
		--seeds 0-80 --batch 81 --out $(OUT)/baseline --overwrite

# The linter and the type checker first (config in pyproject.toml), then the suite.
test: $(VENV)/.installed-dev
	$(BIN)/ruff check lowdiff_sched
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
