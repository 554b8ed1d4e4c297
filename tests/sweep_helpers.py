"""Test-only helpers shared by the sweep tests."""

from igmu.sweep.tracking import PARENT_TAG, ROLE_TAG


def children(client, outcome, role: str | None = None):
    """The MLflow runs of a finished sweep's trials (the parent run's children), or with `role` its
    children of that role (the held-out stage's defaults runs)."""
    experiment = client.get_run(outcome.parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    return [run for run in runs if run.data.tags.get(ROLE_TAG) == role]
