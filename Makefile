# Quickstart targets: each creates .venv, installs torch first (so pip does not fetch a CUDA
# build on a CPU machine; set TORCH_SPEC to choose another build), then the project.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-fast test-integration install clean

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

# The inner loop: everything but the tests marked slow (Ray, Serve, end-to-end sweeps, real servers).
test-fast: $(BIN)/igmu
	$(BIN)/python -m pytest -q -m "not slow"

# Only the tests that start real servers (a Ray head with its Jobs API, an MLflow server); `make test` runs them too.
test-integration: $(BIN)/igmu
	$(BIN)/python -m pytest -q -m integration

clean:
	rm -rf $(VENV) .pytest_cache

# The igmu image for k8s/ (Dockerfile). Its tag and Ray version come from pyproject.toml.
PROJECT_VERSION = $(shell $(PYTHON) -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
RAY_VERSION = $(shell $(PYTHON) -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']; print(next(re.search(r'==([0-9.]+)', d).group(1) for d in deps if d.startswith('ray[')))")

.PHONY: image
image:
	docker build --build-arg RAY_VERSION=$(RAY_VERSION) -t igmu:$(PROJECT_VERSION)-ray$(RAY_VERSION) .
