# Two commands from a clean clone: `make run` and `make test`.
# Everything they need is bootstrapped here: uv in .tools/, the locked dependencies in .venv/.
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test lint typecheck pytest bench sync clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

sync: $(VENV)/.synced

run: sync
	$(BIN)/spawnpoint migrate
	exec $(BIN)/spawnpoint serve --no-migrate

lint: sync
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: sync
	$(BIN)/mypy

pytest: sync
	$(BIN)/pytest -p no:cacheprovider

test: lint typecheck pytest

# Every benchmark runs and writes its table (bench/results/) even when an earlier one misses
# its goal: a missed goal is exit status 1, which `-` reports without stopping.
bench: sync
	-$(BIN)/python bench/api_read.py
	-$(BIN)/python bench/job_queue.py
	-$(BIN)/python bench/policy.py
	-$(BIN)/python bench/spawn.py
	-$(BIN)/python bench/audit.py
	-$(BIN)/python bench/audit_verify.py
	-$(BIN)/python bench/artifacts.py
	-$(BIN)/python bench/costs.py
	-$(BIN)/python bench/events.py
	-$(BIN)/python bench/vs_jupyterhub.py --burst 300

clean:
	rm -rf .tools $(VENV) .mypy_cache .ruff_cache .pytest_cache
