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

# Two pytest workers, each taking whole test files (module fixtures such as a sweep or a cluster stay
# in one process): most slow tests wait on Ray, servers and subprocesses, so two at a time use the
# cores that one leaves idle. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: $(BIN)/igmu
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The inner loop: everything but the tests marked slow (Ray, Serve, end-to-end sweeps, real servers).
test-fast: $(BIN)/igmu
	$(BIN)/python -m pytest -q -m "not slow"

# Only the tests that start real servers (a Ray head with its Jobs API, a multi-node Ray cluster, an MLflow
# server on PostgreSQL and S3); `make test` runs them too.
test-integration: $(BIN)/igmu
	$(BIN)/python -m pytest -q -m integration

clean:
	rm -rf $(VENV) .pytest_cache

# The igmu image for k8s/ (Dockerfile). Its tag and Ray version come from pyproject.toml. With
# REGISTRY (e.g. registry.example.com/ml, or a local registry your cluster pulls from), the image is
# also pushed and k8s/base/kustomization.yaml is pinned to the digest the registry reports: the
# manifests name images by digest, and only a registry gives one.
PROJECT_VERSION = $(shell $(PYTHON) -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
RAY_VERSION = $(shell $(PYTHON) -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']; print(next(re.search(r'==([0-9.]+)', d).group(1) for d in deps if d.startswith('ray[')))")
REGISTRY ?=
KUSTOMIZATION := k8s/base/kustomization.yaml
IMAGE_REPO = $(if $(REGISTRY),$(REGISTRY)/,)igmu
IMAGE_REF = $(IMAGE_REPO):$(PROJECT_VERSION)-ray$(RAY_VERSION)
# The digest a registry gave REPO (arg 2) for the local image REF (arg 1): its RepoDigests entry.
repo_digest = $$(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' $(1) | awk -F@ -v repo=$(2) '$$1 == repo {print $$2; exit}')

.PHONY: image pin-postgres
image:
	docker build --build-arg RAY_VERSION=$(RAY_VERSION) -t $(IMAGE_REF) .
ifneq ($(REGISTRY),)
	docker push $(IMAGE_REF)
	$(PYTHON) k8s/pin-image.py $(KUSTOMIZATION) igmu "$(IMAGE_REF)@$(call repo_digest,$(IMAGE_REF),$(IMAGE_REPO))"
else
	@echo "built $(IMAGE_REF), not pushed: k8s/ pins igmu by digest, so set REGISTRY=... to push and pin it"
endif

# Resolves the postgres tag in the kustomization to the digest it points to now, and pins it.
pin-postgres:
	ref=$$($(PYTHON) k8s/pin-image.py --show $(KUSTOMIZATION) postgres) && docker pull "$$ref" && \
	$(PYTHON) k8s/pin-image.py $(KUSTOMIZATION) postgres "$$ref@$(call repo_digest,"$$ref","$${ref%:*}")"
