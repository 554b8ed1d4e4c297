"""MLflow tracking of a sweep, from the driver only.

One parent run per sweep and one nested child run per trial (`mlflow.parentRunId`). Trials report to
Tune; this Tune callback, running in the driver, is the only process that writes to MLflow, so
SQLite never sees concurrent writers ("database is locked") and a resumed sweep finds each trial's
run by its `igmu.trial_id` tag instead of creating a duplicate.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from ray.tune import Callback

from igmu.metrics.base import ASPECTS
from igmu.sweep.results import (
    EARLY_STOPPED,
    HMEAN,
    SWEEP_TAG,
    WEIGHTS_DIR,
    WEIGHTS_MANIFEST,
    update_sweep_state,
)
from igmu.sweep.trainable import FINAL, SETTINGS_KEY

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "igmu.trial_id"
INTERIM_PREFIX = "interim_"
# On each trial run: whether its changed weights are among its artifacts (`igmu export` needs them).
WEIGHTS_TAG = "igmu.weights"
WEIGHTS_LOGGED, WEIGHTS_NOT_KEPT = "logged", "not-kept"
WEIGHTS_BYTES = "weights_bytes"
# On the parent run: the retention policy, and how many trials it kept with how many bytes.
KEEP_WEIGHTS_TAG = "igmu.keep_weights"
WEIGHTS_KEPT, WEIGHTS_KEPT_BYTES = "weights_kept", "weights_kept_bytes"


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
        """Everything the trial wrote but its weights, which wait for the retention decision."""
        if folder and Path(folder).is_dir():
            for path in sorted(Path(folder).iterdir()):
                if path.name != WEIGHTS_DIR:
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


def record_weights(client, parent_run_id: str, rows: Iterable[Mapping], kept: set, trials_dir: Path,
                   policy: str) -> tuple[int, int]:
    """Log the kept trials' weights to their runs and tag every trial run logged or not-kept; the
    weights of trials not kept are deleted from their trial folders, so a long sweep of a large model
    does not fill the disk. Returns (trials kept, their bytes), also recorded on the parent run."""
    count, total = 0, 0
    for row in rows:
        run_id = row.get("mlflow_run_id")
        folder = trials_dir / str(row["trial_id"]) / WEIGHTS_DIR
        if run_id is None:
            continue
        if row["trial_id"] in kept and (folder / WEIGHTS_MANIFEST).is_file():
            size = int(json.loads((folder / WEIGHTS_MANIFEST).read_text())["bytes"])
            client.log_artifacts(run_id, str(folder), artifact_path=WEIGHTS_DIR)
            client.log_metric(run_id, WEIGHTS_BYTES, size)
            client.set_tag(run_id, WEIGHTS_TAG, WEIGHTS_LOGGED)
            count, total = count + 1, total + size
        elif client.get_run(run_id).data.tags.get(WEIGHTS_TAG) != WEIGHTS_LOGGED:
            # A resumed sweep's front only shrinks; a run logged before keeps its artifacts and tag.
            client.set_tag(run_id, WEIGHTS_TAG, WEIGHTS_NOT_KEPT)
            shutil.rmtree(folder, ignore_errors=True)
    client.set_tag(parent_run_id, KEEP_WEIGHTS_TAG, policy)
    client.log_metric(parent_run_id, WEIGHTS_KEPT, count)
    client.log_metric(parent_run_id, WEIGHTS_KEPT_BYTES, total)
    return count, total


def finish_parent(client, parent_run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(parent_run_id, status)

