"""Test-only helpers shared by the sweep tests."""

import importlib.util
from pathlib import Path

from igmu.sweep.tracking import PARENT_TAG, ROLE_TAG

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str):
    """A bench script (bench/<name>.py, not a package) loaded as a module, to test its own logic."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def children(client, outcome, role: str | None = None):
    """The MLflow runs of a finished sweep's trials (the parent run's children), or with `role` its
    children of that role (the held-out stage's defaults runs)."""
    experiment = client.get_run(outcome.parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    return [run for run in runs if run.data.tags.get(ROLE_TAG) == role]
