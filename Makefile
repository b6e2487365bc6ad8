# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FCNSEG_DATA ?= ../shared/data
export FCNSEG_DATA
# The browser test drives Debian's Chromium (Playwright's own browser download is unreachable here).
CHROMIUM := /usr/bin/chromium

.PHONY: demo test test-slow install lint zoo

$(BIN)/fcnseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Installed only when missing: a file target, so a second `make install` does nothing.
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

install: $(BIN)/fcnseg $(CHROMIUM)

demo: install
	$(BIN)/python benchmarks/demo.py

test: install
	$(BIN)/python -m pytest -q -m "not slow" -n 2 tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

lint: install
	$(BIN)/ruff check src tests benchmarks

zoo: install
	$(BIN)/python benchmarks/model_zoo.py
