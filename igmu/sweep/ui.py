"""Links into MLflow's UI: which server shows a tracking store, and the page of an experiment's runs.

Free of heavy imports, so `igmu --help` and `igmu ui` stay quick.
"""

from __future__ import annotations

# Where `igmu ui` serves a local store, and the UI's view of training runs (its `workflowType`).
UI_HOST, DEFAULT_UI_PORT = "127.0.0.1", 5000
UI_WORKFLOW = "machine_learning"


def ui_server(tracking_uri: str, port: int = DEFAULT_UI_PORT) -> str:
    """Where the MLflow UI of a store is: a tracking server serves its own; any other store (SQLite,
    a folder, a database) is served by the `mlflow ui` that `igmu ui` starts on this machine."""
    return tracking_uri.rstrip("/") if is_tracking_server(tracking_uri) else f"http://{UI_HOST}:{port}"


def is_tracking_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def experiment_url(server: str, experiment_id: str | None) -> str:
    """The experiment's runs in the UI's model-training view: MLflow 3.17's UI opens in GenAI mode
    unless the link asks otherwise (the experiment's `mlflow.experimentKind` tag says so too)."""
    page = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"{server.rstrip('/')}/#/{page}?workflowType={UI_WORKFLOW}"
