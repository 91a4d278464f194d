# npair — the two commands a newcomer needs are `make reproduce-table` and `make test`.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The torch build this project is tested with; override e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TABLE ?= mini
DATASET ?=
PYTEST_ARGS ?=

.PHONY: install test test-all lint reproduce-table data bench gpu-check gpu-check-smoke clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

# pytest exits 5 when it collects nothing: treat that as a failure with a clear message.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5) - failing"; exit 1; fi; exit $$rc

test-all: install
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

# ruff's checks (the rules selected in pyproject.toml) and its formatter in check mode: changes no file.
LINT_STAMP := $(VENV)/.lint-installed
$(LINT_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[lint]"
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

reproduce-table: install
	$(BIN)/python -m npair.tables TABLE=$(TABLE)

data: install
	@if [ -z "$(DATASET)" ]; then echo "usage: make data DATASET=<name>  (see README: Datasets)"; exit 2; fi
	$(BIN)/python -m npair.data.download $(DATASET) --root data

bench: install
	$(BIN)/python scripts/bench_losses.py
	$(BIN)/python scripts/bench_evaluator.py
	$(BIN)/python scripts/bench_data.py
	$(BIN)/python scripts/bench_mini_run.py

# The GPU check (README: "The GPU check"), at most 8 minutes on one GPU. Installs nothing with pip from the
# network, so it needs no .venv: it runs with the checkout's .venv when there is one, else python3 (or
# GPU_CHECK_PYTHON), installing offline the wheels it finds (.whl/ in the checkout, ../wheels beside it).
GPU_CHECK_OUT ?= outputs/gpu_check
GPU_CHECK_ARGS ?=
gpu-check:
	scripts/gpu_check.sh $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# Every stage of the GPU check at toy size on the CPU (CI runs it after the tests).
gpu-check-smoke: install
	GPU_CHECK_PYTHON=$(BIN)/python scripts/gpu_check.sh outputs/gpu_check_smoke --cpu-smoke $(GPU_CHECK_ARGS)
