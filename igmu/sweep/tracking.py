"""MLflow tracking of a sweep, from the driver only.

One parent run per sweep and one nested child run per trial (`mlflow.parentRunId`). Trials report to
Tune; this Tune callback, running in the driver, is the only process that writes to MLflow, so
SQLite never sees concurrent writers ("database is locked") and a resumed sweep finds each trial's
run by its `igmu.trial_id` tag instead of creating a duplicate.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ray.tune import Callback

from igmu.metrics.base import ASPECTS
from igmu.sweep.results import EARLY_STOPPED, HMEAN, SWEEP_TAG, update_sweep_state
from igmu.sweep.trainable import FINAL, SETTINGS_KEY

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "igmu.trial_id"
INTERIM_PREFIX = "interim_"


def start_parent_run(client, experiment: str, sweep_name: str, state_file: Path, config_text: str) -> tuple[str, str]:
    """(experiment_id, parent_run_id); a resumed sweep reuses the parent recorded in `state_file`."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    if state_file.is_file():
        recorded = json.loads(state_file.read_text())
        if recorded.get("experiment_id") == experiment_id:
            client.update_run(recorded["parent_run_id"], status="RUNNING")
            return experiment_id, recorded["parent_run_id"]
    parent = client.create_run(experiment_id, run_name=sweep_name, tags={SWEEP_TAG: sweep_name})
    client.log_text(parent.info.run_id, config_text, "sweep.yaml")
    update_sweep_state(state_file, experiment_id=experiment_id, parent_run_id=parent.info.run_id)
    return experiment_id, parent.info.run_id


class MlflowTracker(Callback):
    """Mirror trial results into nested MLflow runs (the results table joins them by trial tag)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, tags: dict[str, str]):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.run_ids: dict[str, str] = {}

    # --- Tune callback hooks -------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_for(trial)
        step = int(result.get("step", result.get("training_iteration", 0)))
        metrics = {k: float(v) for k, v in result.items() if k in (*ASPECTS, HMEAN)
                   and _finite(v)}
        if result.get(FINAL):
            final = {k: float(v) for k, v in result.items() if (k in ASPECTS or k.startswith("efficiency_")
                                                               or k in ("pre_asr", "post_asr")) and _finite(v)}
            self.client.log_batch(run_id, metrics=_metric_list(final, step))
            self._log_artifacts(run_id, result.get("artifacts_dir"))
        else:
            self.client.log_batch(run_id, metrics=_metric_list({INTERIM_PREFIX + k: v for k, v in metrics.items()}, step))

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = bool((trial.last_result or {}).get(FINAL))
        self._close(trial, "FINISHED", early_stopped=not done)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED", early_stopped=False)

    # --- helpers ---------------------------------------------------------------------------
    def _run_for(self, trial) -> str:
        if trial.trial_id in self.run_ids:
            return self.run_ids[trial.trial_id]
        existing = self.client.search_runs(
            [self.experiment_id], f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'")
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            from igmu.models.loader import kind_named
            from igmu.run import resolved_params
            from igmu.sweep.space import trial_params

            algorithm, overrides = trial_params(trial.config)
            settings = trial.config[SETTINGS_KEY]
            params = resolved_params(algorithm, overrides, settings.get("category"), kind_named(settings.get("kind")))
            tags = {**self.tags, PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id,
                    "algorithm": algorithm, "status": "running", "early_stopped": "false"}
            run_id = self.client.create_run(self.experiment_id, run_name=str(trial), tags=tags).info.run_id
            self.client.log_batch(run_id, params=_param_list(params))
        self.run_ids[trial.trial_id] = run_id
        return run_id

    def _close(self, trial, status: str, early_stopped: bool) -> None:
        run_id = self._run_for(trial)
        label = EARLY_STOPPED if early_stopped and status == "FINISHED" else status.lower()
        self.client.set_tag(run_id, "status", label)
        self.client.set_tag(run_id, "early_stopped", str(early_stopped).lower())
        self.client.set_terminated(run_id, "KILLED" if early_stopped else status)

    def _log_artifacts(self, run_id: str, folder: str | None) -> None:
        if folder and Path(folder).is_dir():
            for path in sorted(Path(folder).iterdir()):
                self.client.log_artifact(run_id, str(path))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_list(values: dict, step: int):
    from mlflow.entities import Metric

    now = int(1000 * time.time())
    return [Metric(key, float(v), now, step) for key, v in values.items()]


def _param_list(params: dict):
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in sorted(params.items())]


def finish_parent(client, parent_run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(parent_run_id, status)

