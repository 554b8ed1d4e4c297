# The igmu image: Ray's GPU image (CUDA, a non-root `ray` user, the tools KubeRay's probes use),
# a CUDA build of torch, and igmu with the `cluster` extra (Postgres driver, S3). One image runs the
# Ray head and workers, the Serve judges and the MLflow server.
#
#   make image        # tags igmu:<project version>-ray<Ray version>, both read from pyproject.toml
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
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users igmu ./igmu
RUN pip install ".[cluster]"
# Sweep files stay beside the working directory: RayJob entrypoints name them as sweeps/<file>.yaml.
COPY --chown=ray:users sweeps ./sweeps
