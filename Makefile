# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
# Every install passes constraints.txt: the exact builds of this project's machines (pyproject.toml has ranges).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
FCNSEG_DATA ?= ../shared/data
export FCNSEG_DATA
# The browser test drives Debian's Chromium (Playwright's own browser download is unreachable here).
CHROMIUM := /usr/bin/chromium
WHEEL_VENV := build/wheel-venv

.PHONY: demo test test-slow install browser lint zoo docs docs-serve dist wheel-check constraints

$(BIN)/fcnseg: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) -e '.[dev]'
	touch $@

install: $(BIN)/fcnseg

# Needs root (apt). Without it the browser test skips with one line saying how to install it.
browser: $(CHROMIUM)
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

demo: install
	$(BIN)/python benchmarks/demo.py

test: install
	$(BIN)/python -m pytest -q -m "not slow" -n 2 tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

lint: install
	$(BIN)/ruff check src tests benchmarks docs

zoo: install
	$(BIN)/python benchmarks/model_zoo.py

# The documentation site, warnings as errors (mkdocs.yml: strict), into site/.
docs: install
	$(BIN)/mkdocs build --strict --clean

docs-serve: install
	$(BIN)/mkdocs serve -a 127.0.0.1:8001

# A wheel and an sdist in dist/, checked by twine.
dist: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

# The wheel as a user gets it: a fresh virtual environment, the wheel and its declared dependencies only
# (at this machine's builds), then `fcnseg --version` and one prediction outside the source tree.
wheel-check: dist
	bash scripts/check_wheel.sh dist $(WHEEL_VENV)

# Re-pin constraints.txt to what the venv holds now (after a deliberate upgrade).
constraints: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v -E '^(pip|setuptools|wheel)=='; } \
	  > constraints.txt.new && mv constraints.txt.new constraints.txt
