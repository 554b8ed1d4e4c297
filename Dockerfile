# The igmu image: Ray's GPU image (CUDA, a non-root `ray` user, the tools KubeRay's probes use),
# a CUDA build of torch, and igmu with the `judges` extra (NudeNet, for the real-image judges) and the
# `cluster` extra (Postgres driver, S3). One image runs the Ray head and workers, the Serve judges
# and the MLflow server.
#
#   make image        # tags igmu:<project version>-ray<Ray version>, both read from pyproject.toml
#   make image REGISTRY=registry.example.com/ml   # also pushes it and pins k8s/ to its digest
#
# RAY_VERSION must equal the Ray pin in pyproject.toml (tests/test_k8s.py checks it), so the base
# image's Ray is the one pip resolves for igmu and the one the KubeRay manifests declare.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu

# Linux wheels of torch on PyPI are CUDA builds; pick another with --build-arg TORCH_SPEC=...
ARG TORCH_SPEC="torch==2.13.0"
ENV HF_HUB_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

USER root
RUN mkdir -p /app /data/igmu-results /mlflow/artifacts \
 && chown -R ray:users /app /data/igmu-results /mlflow/artifacts
USER ray
WORKDIR /app

RUN pip install "${TORCH_SPEC}"
# Dependencies before the code, so that editing igmu/ rebuilds only the last layers: the requirements
# (with the extras below) are read from pyproject.toml alone, and the package goes in afterwards
# without resolving them again.
ARG EXTRAS="judges cluster"
COPY --chown=ray:users pyproject.toml ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + [r for e in sys.argv[1:] for r in p['optional-dependencies'][e]]))" ${EXTRAS} > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY --chown=ray:users README.md ./
COPY --chown=ray:users igmu ./igmu
RUN pip install --no-deps .
# Sweep files stay beside the working directory: RayJob entrypoints name them as sweeps/<file>.yaml.
COPY --chown=ray:users sweeps ./sweeps
