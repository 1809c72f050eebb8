# Two commands for a fresh machine with Python 3.11 and pip:
#   make demo   -- set up .venv, generate the shipped example, train, evaluate, plot
#   make test   -- set up .venv and run the test suite
PY ?= python3
# extra pip options for the torch install (e.g. a CPU-only wheel index outside this environment)
TORCH_PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow clean

$(BIN)/mlpot: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first, pinned, so that no CUDA build is pulled in by a dependency range
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/mlpot

setup: $(BIN)/mlpot

EXAMPLE := examples/cuau_emt
demo: setup
	rm -rf $(EXAMPLE)/out
	$(BIN)/python $(EXAMPLE)/make_dataset.py
	$(BIN)/mlpot train $(EXAMPLE)/config.yaml
	$(BIN)/mlpot test $(EXAMPLE)/out/model.pt $(EXAMPLE)/data/test.extxyz -d $(EXAMPLE)/out/detail --plot $(EXAMPLE)/out/parity.png
	$(BIN)/mlpot plot losses $(EXAMPLE)/out/lcurve.out --output $(EXAMPLE)/out/lcurve.png
	$(BIN)/mlpot plot losses $(EXAMPLE)/out/debug.log --output $(EXAMPLE)/out/losses.png

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
