# Two commands do all the set-up on a fresh machine:
#   make run    the main job on its default configuration
#   make test   the whole test suite
# Both create (or reuse) the virtual environment .venv and install what is needed.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
RUN_CONFIG ?= configs/experiments/default.yaml
RUN_OUT    ?= build/runs/default
JOBS   ?= 2

.PHONY: setup run test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@bash tools/ensure-icarus.sh
	@touch $@

run: setup
	$(VENV)/bin/moepim run $(RUN_CONFIG) --out $(RUN_OUT)

test: setup
	$(PY) -m pytest -n $(JOBS) --dist loadgroup --durations=25

lint: setup
	$(VENV)/bin/ruff check spec hw sim models testbenches tests benchmarks tools

bench: setup
	$(PY) benchmarks/layer_speed.py
	$(PY) benchmarks/tile_speed.py

clean:
	rm -rf build .pytest_cache
