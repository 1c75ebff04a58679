# Two commands on a fresh machine:  `make run`  (main job)  and  `make test`  (test suite).
# Each creates the virtual environment on first use.  TORCH pins the CPU build
# that CPU-only machines here install from a local wheel; override for CUDA.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint dist test-slow test-all test-floors bench reference docs docs-fast docs-runs clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[all,test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ntklab run kernel-gd --out runs/kernel-gd --overwrite

# Tests run in parallel processes of one torch thread each (pytest-xdist): as fast as torch's
# own threads on an idle machine, and 3.6x faster than them with other work on the cores.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --maxprocesses=4

test: $(STAMP)
	$(PYTEST)

# ruff (pycodestyle, pyflakes, bugbear, complexity <= 10, numpy docstrings) and mypy on the package
lint: $(STAMP)
	$(BIN)/pip install --quiet -e ".[lint]"
	$(BIN)/ruff check src tests benchmarks examples docs
	$(BIN)/mypy

# The wheel and sdist (dist/), checked by twine, installed into a fresh venv (.venv-wheel) with the
# lab extra, where the getting-started tutorial (examples/plot_00_getting_started.py) runs outside
# the repository.
dist: $(STAMP)
	$(BIN)/pip install --quiet build twine
	rm -rf dist && $(BIN)/python -m build --outdir dist . > /dev/null
	$(BIN)/twine check --strict dist/*
	rm -rf .venv-wheel && $(PYTHON) -m venv .venv-wheel
	.venv-wheel/bin/pip install --quiet "$(TORCH)"
	.venv-wheel/bin/pip install --quiet "$$(ls dist/*.whl)[lab]"
	cp examples/plot_00_getting_started.py .venv-wheel/tutorial.py
	cd .venv-wheel && OMP_NUM_THREADS=1 MPLBACKEND=Agg bin/python tutorial.py

test-slow: $(STAMP)
	$(PYTEST) -m slow

test-all: $(STAMP)
	$(PYTEST) -m "slow or not slow"

# the fast suite against the dependency floors of pyproject.toml (requirements/floors.txt)
test-floors:
	$(PYTHON) -m venv .venv-floors
	.venv-floors/bin/pip install --quiet "$(TORCH)"
	.venv-floors/bin/pip install --quiet -r requirements/floors.txt
	.venv-floors/bin/pip install --quiet --no-deps -e . && .venv-floors/bin/pip install --quiet pytest pytest-xdist
	OMP_NUM_THREADS=1 .venv-floors/bin/python -m pytest -q -n auto --maxprocesses=4

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/bench_fc_kernel.py
	$(BIN)/python benchmarks/bench_empirical_ntk.py
	$(BIN)/python benchmarks/bench_ntklab_modules.py
	$(BIN)/python benchmarks/bench_cntk.py
	$(BIN)/python benchmarks/bench_architectures.py
	$(BIN)/python benchmarks/bench_busy_machine.py
	$(BIN)/python benchmarks/bench_float32.py

# Recompute the tests' neural-tangents reference values (tests/data/neural_tangents) with
# neural-tangents 0.6.5 (the `bench` extra), print the largest change, and write them in place.
reference: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/make_reference.py --compare

# The documentation site (Sphinx), warnings as errors, into docs/_build/html, then checked offline:
# no page loads anything from the network (check_offline.py) and every internal link and anchor
# resolves (check_links.py; external links are counted, not fetched); in headless Chromium with the
# network off, every formula renders (check_rendered.py; skipped with a message without Chromium).
# `docs-fast` runs the
# example gallery at small sizes (CI); `docs-runs` reruns every experiment's default run into
# docs/runs/, from which the Experiments pages are generated (long: about an hour on 2 cores).
DOCS_STAMP := $(VENV)/.docs-installed
SPHINX := $(BIN)/sphinx-build -W --keep-going -b html -q docs docs/_build/html

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NTKLAB_DOCS_FAST=0 $(SPHINX)
	$(BIN)/python docs/check_offline.py docs/_build/html
	$(BIN)/python docs/check_links.py docs/_build/html
	$(BIN)/python docs/check_rendered.py docs/_build/html

docs-fast: $(DOCS_STAMP)
	NTKLAB_DOCS_FAST=1 OMP_NUM_THREADS=1 $(SPHINX)
	$(BIN)/python docs/check_offline.py docs/_build/html
	$(BIN)/python docs/check_links.py docs/_build/html
	$(BIN)/python docs/check_rendered.py docs/_build/html

docs-runs: $(STAMP)
	for name in $$($(BIN)/ntklab list --names); do \
	  $(BIN)/ntklab run $$name --out docs/runs/$$name --overwrite || exit 1; done

clean:
	rm -rf $(VENV) .venv-floors runs .pytest_cache docs/_build docs/generated docs/auto_examples
