"""A sweep's results: the one definition of its table (one row per trial: columns, trial statuses,
objectives and their directions) and the one way to find a sweep's table, folder and MLflow parent run.

Layout of a sweep's outputs, under the results root (`--storage`, `IGMU_RESULTS`, or
`./igmu-results`, always made absolute because Tune changes each trial's working directory):

    <root>/mlflow.db                 default MLflow store (SQLite, absolute URI)
    <root>/<sweep>/sweep.json        the MLflow parent run (reused on --resume) and the declared objectives
    <root>/<sweep>/tune/             Tune's experiment: trial checkpoints, searcher state
    <root>/<sweep>/trials/<id>/      each finished trial's scorecard.json and grid.png
    <root>/<sweep>/trials/<id>/weights/  its changed tensors (changed.safetensors) and manifest.json,
                                     while `tracking.keep_weights` keeps them (see `kept_trials`)
    <root>/<sweep>/results.parquet   one row per trial: validation scores (val_*) and, for the trials
                                     re-scored when the sweep ended, held-out test scores (test_*)
    <root>/<sweep>/defaults.parquet  one row per algorithm at its published defaults, test split
    <root>/<sweep>/images/           original-model images shared by every trial
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from igmu.errors import UsageError
from igmu.metrics.base import ASPECTS

RESULTS_ENV = "IGMU_RESULTS"
DEFAULT_RESULTS = "igmu-results"
TABLE_FILE = "results.parquet"
STATE_FILE = "sweep.json"

# Trial statuses, as the table's `status` column holds them.
FINISHED = "finished"
EARLY_STOPPED = "early_stopped"
ERROR = "error"
STATUSES = (FINISHED, EARLY_STOPPED, ERROR)

# The harmonic mean of forgetting and preservation: the one scalar early stopping compares by default.
HMEAN = "forget_retain_hmean"
EFFICIENCY_OBJECTIVE = "efficiency_seconds"
OBJECTIVE_NAMES = (*ASPECTS, EFFICIENCY_OBJECTIVE)
DIRECTIONS = ("max", "min")
# Aspect scores lie in [0, 1] with 1 best; efficiency is wall-clock seconds, so less is better. A
# sweep file may declare other directions; the analysis of that sweep then uses those.
NATURAL_DIRECTIONS: dict[str, str] = {**{aspect: "max" for aspect in ASPECTS}, EFFICIENCY_OBJECTIVE: "min"}
DEFAULT_OBJECTIVES = {"forgetting": "max", "preservation": "max"}

# Whether the trial's last scorecard judged most of its images unrecognisable (blank, noise, blur),
# and that share: such a trial's forgetting is destruction, so the analysis leaves it out by default.
# Tables written before these columns existed lack them; readers treat such trials as not degenerate.
DEGENERATE = "degenerate"
UNRECOGNISABLE_SHARE = "unrecognisable_share"

PARAM_PREFIX = "param_"
# Aspect scores are stored per prompt split, named apart: what the search saw (validation) and what a
# held-out re-scoring measured (test). Analysis reads one split at a time through `split_view`.
SPLIT_PREFIXES = {"validation": "val_", "test": "test_"}
VAL_PREFIX, TEST_PREFIX = SPLIT_PREFIXES["validation"], SPLIT_PREFIXES["test"]


def interval_keys(aspect: str) -> tuple[str, str]:
    """The report keys and table columns of an aspect's 95% interval: (low end, high end)."""
    return f"{aspect}_ci_low", f"{aspect}_ci_high"


INTERVAL_COLUMNS = tuple(key for aspect in ASPECTS for key in interval_keys(aspect))
# What each split's scorecard says of a trial: its scores with their 95% intervals, and its degenerate
# flag with the unrecognisable share (tables written before intervals or the flag existed lack those
# columns; readers must not require them).
SPLIT_FIGURES = (*ASPECTS, *INTERVAL_COLUMNS, DEGENERATE, UNRECOGNISABLE_SHARE)
# Columns every row has, in order: each split's figures. Each hyperparameter adds a PARAM_PREFIX column
# after `algorithm`.
COLUMNS = ("trial_id", "algorithm", "status", "early_stopped", "steps",
           *(prefix + key for prefix in (VAL_PREFIX, TEST_PREFIX) for key in SPLIT_FIGURES),
           HMEAN, EFFICIENCY_OBJECTIVE, "trial_seconds", "node", "mlflow_run_id")
# The column (and MLflow run tag) naming the Ray node a trial last ran on: a retried trial may move.
NODE = "node"
DEFAULTS_FILE = "defaults.parquet"
REQUIRED_COLUMNS = ("trial_id", "status")
# The tag on a sweep's MLflow parent run that names the sweep (and so its folder under the results root).
SWEEP_TAG = "igmu.sweep"
# MLflow's own variable: on a cluster the job environment points every driver at the tracking server.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# A finished trial's changed tensors (vs the original model) and what they are, in its trial folder and,
# when kept, under the same artifact path of its MLflow run.
TRIALS_DIR = "trials"
WEIGHTS_DIR = "weights"
CHANGED_FILE = "changed.safetensors"
WEIGHTS_MANIFEST = "manifest.json"
# Which trials keep their weights (and are re-scored on the test split): the front (plus the best few
# on the first objective), each algorithm's own front (plus its best few), all, none.
KEEP_FRONT, KEEP_FRONTS, KEEP_ALL, KEEP_NONE = "front", "fronts", "all", "none"
KEEP_WEIGHTS = (KEEP_FRONT, KEEP_FRONTS, KEEP_ALL, KEEP_NONE)
# Trials kept beside the front under `front`: the best on the first objective, which a front in many
# objectives may leave out (a front member can be mediocre on each single objective).
KEEP_TOP = 3
# MLflow run ids are uuid4 hex strings; only text of that shape is worth a tracking-store query.
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def trial_row(trial_id, algorithm: str, params: Mapping, status: str, metrics: Mapping, run_id: str | None,
              node: str | None = None) -> dict:
    """One row of the table from a trial's last reported metrics. Aspect scores count only from the
    final scorecard: an early-stopped trial's were measured on the interim budget. An aspect without an
    interval (not measured, or no honest one) has NaN ends. The degenerate flag is the last
    scorecard's, interim or final: a broken model is broken at either budget."""
    if status not in STATUSES:
        raise ValueError(f"unknown trial status {status!r}; valid: {', '.join(STATUSES)}")
    final = status == FINISHED
    return {"trial_id": trial_id, "algorithm": algorithm, **param_columns(params),
            "status": status, "early_stopped": status == EARLY_STOPPED, "steps": metrics.get("step"),
            **{VAL_PREFIX + key: (float(metrics[key]) if final and key in metrics else math.nan)
               for key in (*ASPECTS, *INTERVAL_COLUMNS)},
            VAL_PREFIX + DEGENERATE: bool(metrics.get(DEGENERATE, False)),
            VAL_PREFIX + UNRECOGNISABLE_SHARE: metrics.get(UNRECOGNISABLE_SHARE, math.nan),
            **{TEST_PREFIX + key: math.nan for key in (*ASPECTS, *INTERVAL_COLUMNS, UNRECOGNISABLE_SHARE)},
            TEST_PREFIX + DEGENERATE: None,
            HMEAN: metrics.get(HMEAN, math.nan),
            EFFICIENCY_OBJECTIVE: metrics.get(EFFICIENCY_OBJECTIVE, math.nan),
            "trial_seconds": metrics.get("time_total_s", math.nan), NODE: node,
            "mlflow_run_id": run_id}


def param_columns(params: Mapping) -> dict:
    """Hyperparameters as PARAM_PREFIX columns of a table row."""
    return {f"{PARAM_PREFIX}{k}": (str(v) if isinstance(v, str) else v) for k, v in params.items()}


def kept_trials(rows: Iterable[Mapping], objectives: Mapping[str, str], policy: str) -> set:
    """Trial ids whose weights `policy` keeps: finished trials only (early-stopped ones wrote no
    weights); under `front`, the Pareto front on `objectives` and the KEEP_TOP best on the first,
    both among the trials that are not degenerate; under `fronts`, the same within each algorithm
    (what a comparison of algorithms needs: every algorithm's best, not only the overall front's)."""
    if policy not in KEEP_WEIGHTS:
        raise UsageError(f"unknown keep_weights policy {policy!r}; valid: {', '.join(KEEP_WEIGHTS)}")
    rows = list(rows)
    if policy == KEEP_FRONTS:
        algorithms = dict.fromkeys(row["algorithm"] for row in rows)
        return set().union(*(kept_trials([row for row in rows if row["algorithm"] == algorithm], objectives,
                                         KEEP_FRONT) for algorithm in algorithms))
    finished = [row for row in rows if row["status"] == FINISHED]
    if policy != KEEP_FRONT:
        return {row["trial_id"] for row in finished} if policy == KEEP_ALL else set()
    import numpy as np

    from igmu.sweep.dominance import MAXIMISE, non_dominated

    # The analysis leaves degenerate trials out of the front, so `igmu export --knee` never asks for them.
    finished = [row for row in finished if not row.get(VAL_PREFIX + DEGENERATE)]
    if not finished:
        return set()
    names, directions = list(objectives), list(objectives.values())
    points = np.array([[_as_float(row.get(split_column(name, "validation"))) for name in names] for row in finished],
                      dtype=float)
    front = non_dominated(points, directions)
    first = points[:, 0] * (-1.0 if directions[0] == MAXIMISE else 1.0)
    scored = [i for i in np.argsort(first, kind="stable") if math.isfinite(first[i])]
    keep = set(np.flatnonzero(front)) | set(scored[:KEEP_TOP])
    return {finished[i]["trial_id"] for i in sorted(keep)}


def split_column(name: str, split: str) -> str:
    """The table column of score `name` in `split` (aspects are stored per split, other figures once)."""
    return SPLIT_PREFIXES[split] + name if name in ASPECTS else name


def split_view(table, split: str = "validation", label: str = "this table"):
    """The table with each aspect's column holding `split`'s scores, as analysis reads them. A table
    written before scores were named per split holds validation scores under the bare names."""
    prefix = SPLIT_PREFIXES[split]
    stored = [column for column in table.columns if column.startswith(prefix) and
              column[len(prefix):].split("_ci_")[0] in SPLIT_FIGURES]
    if not stored:
        if split == "validation":
            return table
        raise UsageError(f"{label} has no {split} scores (the sweep ended before held-out scoring existed, or "
                         f"re-scored no trial); valid: --split validation")
    view = table.drop(columns=[c for c in table.columns if any(c.startswith(p) for p in SPLIT_PREFIXES.values())])
    for column in stored:
        view[column[len(prefix):]] = table[column]
    return view


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def row_params(row: Mapping) -> dict:
    """A row's hyperparameters; NaN marks a hyperparameter of another algorithm in the sweep."""
    return {key[len(PARAM_PREFIX):]: value for key, value in row.items()
            if key.startswith(PARAM_PREFIX) and value == value}


def is_uri(storage: str | None) -> bool:
    return bool(storage) and "://" in storage


def results_root(storage: str | None = None) -> Path:
    """The local results root. A URI `--storage` (s3://...) holds Tune's checkpoints only; the
    MLflow store default, the trials' artifacts and the results table stay local."""
    local = None if is_uri(storage) else storage
    return Path(local or os.environ.get(RESULTS_ENV, DEFAULT_RESULTS)).expanduser().resolve()


def default_tracking_uri(results_root: Path) -> str:
    """An absolute SQLite URI: Tune changes each trial's working directory, so relative ones break."""
    return f"sqlite:///{(results_root / 'mlflow.db').resolve()}"


def resolve_tracking_uri(flag: str | None, sweep_file_uri: str | None, results_root: Path) -> str:
    """`--tracking-uri`, else the sweep file's `tracking.uri`, else $MLFLOW_TRACKING_URI, else SQLite
    under the results root. The file outranks the environment: it is the sweep's own setting."""
    return flag or sweep_file_uri or os.environ.get(TRACKING_URI_ENV) or default_tracking_uri(results_root)


def write_table(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".parquet.tmp")
    pd.DataFrame(rows).to_parquet(partial, index=False)
    os.replace(partial, path)
    return path


def update_sweep_state(path: Path, **entries) -> None:
    """Merge `entries` into sweep.json, written whole and atomically."""
    state = {**read_sweep_state(path), **entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(state))
    os.replace(partial, path)


def objective_directions(names: Iterable[str], declared: Mapping[str, str] | None = None) -> dict[str, str]:
    """name -> direction for the chosen objectives: as the sweep declared them, else the natural one."""
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise UsageError(f"no objective given; valid: {', '.join(OBJECTIVE_NAMES)}")
    for name in names:
        if name not in OBJECTIVE_NAMES:
            close = difflib.get_close_matches(name, OBJECTIVE_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown objective {name!r}{hint}; valid: {', '.join(OBJECTIVE_NAMES)}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"objective {duplicates[0]!r} is given twice; give each objective once")
    declared = declared or {}
    return {name: declared.get(name, NATURAL_DIRECTIONS[name]) for name in names}


@dataclass(frozen=True)
class SweepSource:
    """Where a results table came from, and so where its trial folders and MLflow runs are."""

    label: str
    table_path: Path
    # Folder holding sweep.json and trials/<trial_id>/; for a bare Parquet file, the file's folder.
    sweep_dir: Path
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    # Why MLflow cannot be updated for this source (None when it can be tried).
    mlflow_unavailable: str | None = None
    # objective -> direction as the sweep file declared them (empty for a bare Parquet file).
    objectives: Mapping[str, str] = field(default_factory=dict)

    @property
    def mlflow_note(self) -> str | None:
        """Why MLflow is skipped for this source, or None when the tracking store can be tried."""
        if self.mlflow_unavailable:
            return self.mlflow_unavailable
        return None if self.parent_run_id else "no MLflow parent run is known for this table; skipping MLflow"

    def grid_path(self, trial_id) -> Path | None:
        """The trial's image grid on disk, when the sweep kept one."""
        path = self.sweep_dir / TRIALS_DIR / str(trial_id) / "grid.png"
        return path if path.is_file() else None

    def weights_dir(self, trial_id) -> Path:
        """Where the trial wrote its changed weights (present while the retention policy keeps them)."""
        return self.sweep_dir / TRIALS_DIR / str(trial_id) / WEIGHTS_DIR


def locate_sweep(sweep: str, storage: str | None = None, tracking_uri: str | None = None) -> SweepSource:
    """Resolve SWEEP: a `.parquet` file, a sweep name under the results root, or an MLflow parent run id.

    A parent run id is looked up first in the `sweep.json` files under the results root (no
    tracking store needed), then in the tracking store, whose parent run carries the sweep name in
    its `igmu.sweep` tag.
    """
    if sweep.endswith(".parquet"):
        return _source_from_parquet(Path(sweep), tracking_uri)
    root = results_root(storage)
    if (root / sweep / TABLE_FILE).is_file():
        return _source_from_sweep_dir(root / sweep, root, tracking_uri)
    sweep_dir = _sweep_dir_by_parent_run(root, sweep) or _sweep_dir_from_mlflow(root, sweep, tracking_uri)
    if sweep_dir is not None:
        if not (sweep_dir / TABLE_FILE).is_file():
            raise UsageError(f"sweep {sweep_dir.name!r} (parent run {sweep}) has no results table yet "
                             f"(looked at {sweep_dir / TABLE_FILE}); has it finished?")
        return _source_from_sweep_dir(sweep_dir, root, tracking_uri, parent_run_id=sweep)
    known = sorted(path.parent.name for path in root.glob("*/results.parquet"))
    raise UsageError(f"unknown sweep {sweep!r}: not a sweep name under {root}, an MLflow parent run id or a "
                     f".parquet file; known sweeps: {', '.join(known) or 'none'}")


def _source_from_parquet(path: Path, tracking_uri: str | None) -> SweepSource:
    """A Parquet file given directly; it is a sweep's own table when a sweep.json sits next to it."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"no results table at {path}")
    if (path.parent / STATE_FILE).is_file():
        # <root>/<sweep>/results.parquet: the default tracking store is <root>/mlflow.db.
        return _source_from_sweep_dir(path.parent, path.parent.parent, tracking_uri, table_path=path)
    label = path.parent.name if path.name == TABLE_FILE else path.stem
    return SweepSource(label, path, path.parent,
                       mlflow_unavailable=f"{path.name} has no sweep.json next to it, so its MLflow parent run "
                                          "is unknown; skipping MLflow")


def _source_from_sweep_dir(sweep_dir: Path, root: Path, tracking_uri: str | None,
                           table_path: Path | None = None, parent_run_id: str | None = None) -> SweepSource:
    """A sweep folder under `root`; its parent run is the one given, else the one sweep.json records."""
    state = read_sweep_state(sweep_dir / STATE_FILE)
    parent_run_id = parent_run_id or state.get("parent_run_id")
    uri = tracking_uri or default_tracking_uri(root)
    unavailable = None
    if not parent_run_id:
        unavailable = f"no parent run recorded in {sweep_dir / 'sweep.json'}; skipping MLflow"
    elif tracking_uri is None and not (root / "mlflow.db").is_file():
        unavailable = f"no tracking store at {root / 'mlflow.db'} (pass --tracking-uri); skipping MLflow"
    return SweepSource(sweep_dir.name, table_path or sweep_dir / TABLE_FILE, sweep_dir,
                       parent_run_id=parent_run_id, tracking_uri=uri, mlflow_unavailable=unavailable,
                       objectives=dict(state.get("objectives") or {}))


def read_sweep_state(path: Path) -> dict:
    """sweep.json as a dict; an unreadable or missing file counts as empty (it is only a pointer)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _sweep_dir_by_parent_run(root: Path, parent_run_id: str) -> Path | None:
    """The sweep folder whose sweep.json records this parent run, without touching MLflow."""
    for state_file in sorted(root.glob("*/sweep.json")):
        if read_sweep_state(state_file).get("parent_run_id") == parent_run_id:
            return state_file.parent
    return None


def _sweep_dir_from_mlflow(root: Path, run_id: str, tracking_uri: str | None) -> Path | None:
    """Ask the tracking store for the parent run and follow its `igmu.sweep` tag to the sweep folder.

    Only tried for text shaped like a run id and a store that exists: opening a SQLite URI creates
    the database, which a mistyped sweep name must not do.
    """
    if not RUN_ID_PATTERN.match(run_id):
        return None
    if tracking_uri is None and not (root / "mlflow.db").is_file():
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri or default_tracking_uri(root)).get_run(run_id)
    except MlflowException:
        return None
    sweep_name = run.data.tags.get(SWEEP_TAG)
    return root / sweep_name if sweep_name else None


def distinct_sources(sources: Iterable[SweepSource]) -> list[SweepSource]:
    """Drop repeats of the same table and make labels unique, since reports key trials by label."""
    by_path = {source.table_path: source for source in sources}
    distinct, seen = [], set()
    for source in by_path.values():
        label, copy = source.label, 2
        while label in seen:
            label, copy = f"{source.label}-{copy}", copy + 1
        seen.add(label)
        distinct.append(dataclasses.replace(source, label=label))
    return distinct


def load_sweep_table(source: SweepSource, split: str | None = "validation"):
    """Read the results table, with `split`'s scores under the aspect names (see `split_view`; None:
    the columns as stored), turning unreadable files and foreign tables into one-line errors."""
    import pandas as pd

    try:
        table = pd.read_parquet(source.table_path)
    except Exception as err:  # pyarrow raises several unrelated types for a corrupt or non-Parquet file
        raise UsageError(f"cannot read results table {source.table_path}: {err}") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise UsageError(f"{source.table_path} is not an igmu results table: no column {missing[0]!r}")
    return table if split is None else split_view(table, split, label=f"sweep {source.label!r}")
