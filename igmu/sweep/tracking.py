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
from igmu.provenance import environment_tags
from igmu.sweep import profile
from igmu.sweep.results import (
    DEGENERATE,
    EARLY_STOPPED,
    HMEAN,
    INTERVAL_COLUMNS,
    NODE,
    SWEEP_TAG,
    TEST_PREFIX,
    UNRECOGNISABLE_SHARE,
    VAL_PREFIX,
    WEIGHTS_DIR,
    WEIGHTS_MANIFEST,
    interval_keys,
    update_sweep_state,
)
from igmu.sweep.trainable import ENVIRONMENT, FINAL, LOSS_PREFIX, LOSS_STEPS, SETTINGS_KEY

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "igmu.trial_id"
INTERIM_PREFIX = "interim_"
# Final scores named by the prompt split they were measured on (val_*, test_*), as in the results table.
SPLIT_SCORES = (*ASPECTS, *INTERVAL_COLUMNS, "pre_asr", "post_asr", DEGENERATE, UNRECOGNISABLE_SHARE)
# Tags of the runs the held-out stage makes: one per algorithm at its published defaults.
ROLE_TAG, DEFAULTS_ROLE = "igmu.role", "defaults"
# On each trial run: whether its changed weights are among its artifacts (`igmu export` needs them).
WEIGHTS_TAG = "igmu.weights"
WEIGHTS_LOGGED, WEIGHTS_NOT_KEPT = "logged", "not-kept"
WEIGHTS_BYTES = "weights_bytes"
# On each trial run: every Ray node the trial ran on, in order, comma-separated (`node` is the last).
NODES_TAG = "igmu.nodes"
# On the parent run: the retention policy, and how many trials it kept with how many bytes.
KEEP_WEIGHTS_TAG = "igmu.keep_weights"
WEIGHTS_KEPT, WEIGHTS_KEPT_BYTES = "weights_kept", "weights_kept_bytes"
# MLflow 3's UI opens an experiment in GenAI mode unless it is tagged as model development; the value
# is the UI's `ExperimentKind.CUSTOM_MODEL_DEVELOPMENT` (mlflow/server/js, MLflow 3.17).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# A trial run's name: the algorithm and its settings, searched ones first, cut to this many characters.
RUN_NAME_LENGTH = 80
# MLflow's limit on metrics in one log_batch call.
MAX_METRICS_PER_BATCH = 1000
# How MLflow marks what a dataset input was used for.
DATASET_CONTEXT_TAG, EVALUATION_CONTEXT = "mlflow.data.context", "evaluation"


def start_parent_run(client, experiment: str, sweep_name: str, state_file: Path, config_text: str) -> tuple[str, str]:
    """(experiment_id, parent_run_id); a resumed sweep reuses the parent recorded in `state_file`."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    if state_file.is_file():
        recorded = json.loads(state_file.read_text())
        if recorded.get("experiment_id") == experiment_id:
            client.update_run(recorded["parent_run_id"], status="RUNNING")
            _set_tags(client, recorded["parent_run_id"], environment_tags())  # the code that resumed it
            return experiment_id, recorded["parent_run_id"]
    parent = client.create_run(experiment_id, run_name=sweep_name, tags={SWEEP_TAG: sweep_name, **environment_tags()})
    client.log_text(parent.info.run_id, config_text, "sweep.yaml")
    update_sweep_state(state_file, experiment_id=experiment_id, parent_run_id=parent.info.run_id)
    return experiment_id, parent.info.run_id



class MlflowTracker(Callback):
    """Mirror trial results into nested MLflow runs (the results table joins them by trial tag)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, tags: dict[str, str],
                 searched: dict[str, list[str]] | None = None, datasets: list | None = None):
        """`searched`: algorithm -> the hyperparameters the sweep searches (they lead each run's name);
        `datasets`: MLflow dataset inputs every trial run records (the evaluation prompt sets)."""
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.searched = searched or {}
        self.datasets = datasets or []
        self.run_ids: dict[str, str] = {}
        self.described: set[str] = set()  # trials whose run carries its worker's environment tags
        self.nodes: dict[str, list[str]] = {}  # trial id -> the nodes it ran on, as its run records them
        self.started: dict[str, float] = {}  # trial id -> when Tune started it (monotonic), for its profile

    # --- Tune callback hooks -------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_for(trial)
        step = int(result.get("step", result.get("training_iteration", 0)))
        self._describe(trial, run_id, result.get(ENVIRONMENT))
        self._log_metrics(run_id, loss_metrics(result.get(LOSS_STEPS) or []))
        metrics = {k: float(v) for k, v in result.items() if k in (*ASPECTS, *INTERVAL_COLUMNS, HMEAN)
                   and _finite(v)}
        phases = {k: float(v) for k, v in result.items() if k.startswith(profile.PREFIX) and _finite(v)}
        if result.get(FINAL):
            final = {(VAL_PREFIX + k if k in SPLIT_SCORES else k): float(v) for k, v in result.items()
                     if (k in SPLIT_SCORES or k.startswith("efficiency_")) and _finite(v)}
            self.client.log_batch(run_id, metrics=_metric_list({**final, **phases}, step))
            self._log_artifacts(run_id, result.get("artifacts_dir"))
        else:
            interim = {INTERIM_PREFIX + k: v for k, v in metrics.items()}
            self.client.log_batch(run_id, metrics=_metric_list({**interim, **phases}, step))

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
            recorded = existing[0].data.tags.get(NODES_TAG)  # a resumed driver continues the run's node history
            self.nodes[trial.trial_id] = recorded.split(",") if recorded else []
        else:
            from igmu.models.loader import kind_named
            from igmu.run import resolved_params
            from igmu.sweep.space import trial_params

            algorithm, overrides = trial_params(trial.config)
            settings = trial.config[SETTINGS_KEY]
            params = resolved_params(algorithm, overrides, settings.get("category"), kind_named(settings.get("kind")))
            # The driver's record until the trial's first report brings its worker's (see _describe).
            tags = {**environment_tags(), **self.tags, PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id,
                    "algorithm": algorithm, "status": "running", "early_stopped": "false"}
            name = trial_run_name(algorithm, overrides, self.searched.get(algorithm, ()))
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self.client.log_batch(run_id, params=_param_list(params))
            if self.datasets:
                self.client.log_inputs(run_id, datasets=self.datasets)
        self.run_ids[trial.trial_id] = run_id
        return run_id

    def _log_metrics(self, run_id: str, metrics: list) -> None:
        """In batches MLflow accepts: a long stretch between evaluations carries many loss points."""
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])

    def _describe(self, trial, run_id: str, environment: Mapping | None) -> None:
        """Tag the run with the code and machine record of the worker that ran the trial: once, and
        again whenever the trial reports from another node (Tune retried it elsewhere)."""
        if not environment:
            return
        node = environment.get(NODE)
        seen = self.nodes.setdefault(trial.trial_id, [])
        moved = bool(node) and (not seen or seen[-1] != node)
        if trial.trial_id in self.described and not moved:
            return
        tags = {str(k): str(v) for k, v in environment.items()}
        if moved:
            seen.append(node)
            tags[NODES_TAG] = ",".join(seen)
        _set_tags(self.client, run_id, tags)
        self.described.add(trial.trial_id)

    def _close(self, trial, status: str, early_stopped: bool) -> None:
        run_id = self._run_for(trial)
        self._log_span(trial, run_id)
        label = EARLY_STOPPED if early_stopped and status == "FINISHED" else status.lower()
        self.client.set_tag(run_id, "status", label)
        self.client.set_tag(run_id, "early_stopped", str(early_stopped).lower())
        self.client.set_terminated(run_id, "KILLED" if early_stopped else status)

    def _log_span(self, trial, run_id: str) -> None:
        """The trial's time on its slot as the driver saw it, and the share of it that was orchestration."""
        started = self.started.pop(trial.trial_id, None)
        if started is None:
            return
        wall = time.monotonic() - started
        last = trial.last_result or {}
        span = {profile.key(profile.WALL): wall,
                profile.key(profile.ORCHESTRATION): profile.orchestration_seconds(wall, last)}
        self.client.log_batch(run_id, metrics=_metric_list(span, int(last.get("step", 0))))

    def _log_artifacts(self, run_id: str, folder: str | None) -> None:
        """Everything the trial wrote but its weights, which wait for the retention decision."""
        if folder and Path(folder).is_dir():
            for path in sorted(Path(folder).iterdir()):
                if path.name != WEIGHTS_DIR:
                    self.client.log_artifact(run_id, str(path))


def trial_run_name(algorithm: str, overrides: Mapping, searched: Iterable[str] = (),
                   limit: int = RUN_NAME_LENGTH) -> str:
    """`esd lr=3.2e-04 negative_guidance=1.7`: the algorithm, then its searched settings, then the
    sweep file's fixed ones, shortened, and whole settings dropped from the end past `limit` characters."""
    searched = [key for key in searched if key in overrides]
    keys = searched + sorted(key for key in overrides if key not in searched)
    name = algorithm
    for key in keys:
        part = f"{key}={short_value(overrides[key])}"
        if len(name) + 1 + len(part) > limit:
            break
        name = f"{name} {part}"
    return name


def short_value(value) -> str:
    """Short: two significant digits in scientific notation for the tiny and the huge (learning
    rates), three otherwise, whole numbers as integers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.1e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3g}"


def loss_metrics(steps: Iterable[Mapping]):
    """Each step's unlearning losses as `loss_<name>` metrics at that step: the per-run loss curves."""
    from mlflow.entities import Metric

    now = int(1000 * time.time())
    return [Metric(f"{LOSS_PREFIX}{name}", float(value), now, int(entry["step"]))
            for entry in steps for name, value in entry.items() if name != "step" and _finite(value)]


def _set_tags(client, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def prompt_datasets(prompts, name: str) -> list:
    """The evaluation prompt sets (`EvaluationPrompts`) as MLflow dataset inputs, one per non-empty
    set, named `<name>/<set>`, used for evaluation."""
    import warnings

    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for set_name, rows in prompts.tables.items():
        if not rows:
            continue
        with warnings.catch_warnings():  # a local path matches MLflow's "" and "file" sources alike
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(pd.DataFrame(rows), name=f"{name}/{set_name}", source=prompts.source)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(DATASET_CONTEXT_TAG, EVALUATION_CONTEXT)]))
    return inputs


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


def split_metrics(card: Mapping, prefix: str) -> dict:
    """A scorecard's aspect scores (and attack rates, degenerate flag, unrecognisable share) as
    `<prefix><name>` metrics."""
    aspects = card.get("aspects", {})
    values = {name: result["score"] for name, result in aspects.items()}
    values.update({key: end for name, result in aspects.items() if result.get("interval")
                   for key, end in zip(interval_keys(name), result["interval"])})
    values.update({name: aspects["robustness"][name] for name in ("pre_asr", "post_asr")
                   if name in aspects.get("robustness", {})})
    values[DEGENERATE] = int(bool(card.get(DEGENERATE)))
    if card.get(UNRECOGNISABLE_SHARE) is not None:
        values[UNRECOGNISABLE_SHARE] = card[UNRECOGNISABLE_SHARE]
    return {prefix + name: float(v) for name, v in values.items() if _finite(v)}


def record_test_scores(client, rows: Iterable[Mapping], trials_dir: Path, scorecard_name: str) -> int:
    """Log each re-scored trial's test scores (test_*) and test scorecard to its run; returns how many."""
    count = 0
    for row in rows:
        card_path = trials_dir / str(row["trial_id"]) / scorecard_name
        if row.get("mlflow_run_id") and card_path.is_file():
            card = json.loads(card_path.read_text())
            client.log_batch(row["mlflow_run_id"], metrics=_metric_list(split_metrics(card, TEST_PREFIX), 0))
            client.log_artifact(row["mlflow_run_id"], str(card_path))
            count += 1
    return count


def record_defaults(client, experiment_id: str, parent_run_id: str, cards: Mapping[str, dict],
                    cards_dir: Path, tags: Mapping[str, str]) -> dict[str, str]:
    """One child run per algorithm at its defaults (found again, not duplicated, when a sweep resumes)."""
    run_ids = {}
    for algorithm, card in sorted(cards.items()):
        found = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}' and "
                                                    f"tags.`{ROLE_TAG}` = '{DEFAULTS_ROLE}' and "
                                                    f"tags.algorithm = '{algorithm}'")
        if found:
            run_ids[algorithm] = found[0].info.run_id
            continue
        run = client.create_run(experiment_id, run_name=f"{algorithm} defaults",
                                tags={**environment_tags(), **tags, PARENT_TAG: parent_run_id,
                                      ROLE_TAG: DEFAULTS_ROLE, "algorithm": algorithm})
        run_id = run.info.run_id
        efficiency = {k: float(v) for k, v in card.get("efficiency", {}).items() if _finite(v)}
        client.log_batch(run_id, params=_param_list(card.get("params", {})),
                         metrics=_metric_list({**split_metrics(card, TEST_PREFIX), **efficiency}, 0))
        client.log_artifact(run_id, str(cards_dir / algorithm / "scorecard.json"))
        client.set_terminated(run_id, "FINISHED")
        run_ids[algorithm] = run_id
    return run_ids


def finish_parent(client, parent_run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(parent_run_id, status)

