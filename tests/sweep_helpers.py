"""Test-only helpers shared by the sweep tests."""

from igmu.sweep.tracking import PARENT_TAG


def children(client, outcome):
    """The MLflow runs of a finished sweep's trials (the parent run's children)."""
    experiment = client.get_run(outcome.parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
