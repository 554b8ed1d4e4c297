"""What produced a run: the igmu checkout and the library versions, and the machine it ran on.

Recorded as tags on a sweep's parent run (the driver's record) and on every trial run (the record of
the worker that ran the trial, which on a cluster is another machine than the driver's), so a score
can always be traced to the code and hardware behind it. Plain strings only: no MLflow, no Ray here,
because the trainable computes its own record inside the worker.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

UNKNOWN = "unknown"
# Libraries whose version changes what a sweep computes or how it is run.
LIBRARIES = ("torch", "diffusers", "transformers", "ray", "mlflow", "optuna")
GIT_COMMIT_TAG = "igmu.git_commit"
VERSION_TAG = "igmu.version"
# MLflow's own tag for a run's source commit: the UI shows it on the run page.
MLFLOW_COMMIT_TAG = "mlflow.source.git.commit"


@functools.cache
def environment_tags() -> dict[str, str]:
    """Tag name -> value for this process's code, libraries and machine (computed once per process)."""
    commit = git_commit()
    tags = {GIT_COMMIT_TAG: commit, VERSION_TAG: package_version("igmu"),
            **{f"version.{name}": package_version(name) for name in LIBRARIES},
            "version.python": platform.python_version(), "host.platform": platform.platform(),
            "host.machine": platform.machine(), "host.cpu_count": str(os.cpu_count() or 0), **gpu_tags()}
    if commit != UNKNOWN:
        tags[MLFLOW_COMMIT_TAG] = commit
    return tags


def git_commit() -> str:
    """The commit of the igmu checkout this code runs from; "unknown" for an installed wheel or no git."""
    folder = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else UNKNOWN


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def gpu_tags() -> dict[str, str]:
    """The CUDA device's name, when this machine has one (no tag at all on CPU-only machines)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"host.gpu": torch.cuda.get_device_name(0), "host.gpu_count": str(torch.cuda.device_count())}
