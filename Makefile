# Quickstart targets: each creates .venv, installs torch first (so pip does not fetch a CUDA
# build on a CPU machine; set TORCH_SPEC to choose another build), then the project.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/igmu: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/igmu

demo: $(BIN)/igmu
	$(BIN)/igmu world check
	$(BIN)/igmu sweep sweeps/salun.yaml

test: $(BIN)/igmu
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
