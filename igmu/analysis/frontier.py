"""Pareto analysis of a sweep's results table: which trials are worth a look, and how algorithms compare.

`igmu pareto` and `igmu compare` (and the summary `igmu sweep` prints at the end) all start from the
same question: among the trials that were scored, which ones no other trial beats on every chosen
objective? This module answers it at the level of the results table (one row per trial, see
`igmu.sweep.engine`), on top of the pure numpy maths in `igmu.analysis.pareto`:

* `locate_sweep` turns what the user typed (a sweep name, an MLflow parent run id or a Parquet file)
  into the table, the sweep folder and the MLflow parent run;
* `select_scored` / `compute_frontier` keep only trials with finite scores and compute the front,
  its hypervolume and its knee point;
* `frontier_json`, `format_front_table`, `front_summary` and `compare_algorithms` / `leaderboard`
  shape the answer for JSON, the terminal and the compare report;
* `tag_front` and `record_front` write the answer back to MLflow (`pareto=true|false` on every child
  run, plots on the parent run), so the MLflow UI can filter on `tags.pareto = 'true'`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from igmu.analysis.pareto import (
    MAXIMISE,
    MINIMISE,
    hypervolume,
    knee_point,
    non_dominated,
)
from igmu.errors import UsageError
from igmu.metrics.base import ASPECTS

EFFICIENCY_OBJECTIVE = "efficiency_seconds"
# Aspect scores lie in [0, 1] with 1 best; efficiency is wall-clock seconds, so less is better.
OBJECTIVE_DIRECTIONS: dict[str, str] = {**{aspect: MAXIMISE for aspect in ASPECTS}, EFFICIENCY_OBJECTIVE: MINIMISE}
DEFAULT_OBJECTIVES = ("forgetting", "preservation")

FINISHED = "finished"
EARLY_STOPPED = "early_stopped"
PARAM_PREFIX = "param_"
REQUIRED_COLUMNS = ("trial_id", "status")

PARETO_TAG = "pareto"
# Set on the parent run, so a reader of the child tags knows which objectives they refer to.
PARETO_OBJECTIVES_TAG = "igmu.pareto_objectives"
PARETO_ARTIFACT_DIR = "pareto"
# MLflow run ids are uuid4 hex strings; only text of that shape is worth a tracking-store query.
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
SEARCH_PAGE_SIZE = 1000


# --- objectives -------------------------------------------------------------------------------


def parse_objectives(objectives: str | Sequence[str]) -> tuple[str, ...]:
    """Validate a comma-separated list (or sequence) of objective names, keeping the given order.

    Order matters: the first two objectives are the axes of every plot.
    """
    names = objectives.split(",") if isinstance(objectives, str) else list(objectives)
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise UsageError(f"no objective given; valid: {', '.join(OBJECTIVE_DIRECTIONS)}")
    for name in names:
        if name not in OBJECTIVE_DIRECTIONS:
            close = difflib.get_close_matches(name, OBJECTIVE_DIRECTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown objective {name!r}{hint}; valid: {', '.join(OBJECTIVE_DIRECTIONS)}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"objective {duplicates[0]!r} is given twice; give each objective once")
    return tuple(names)


def directions_for(objectives: Sequence[str]) -> tuple[str, ...]:
    """The fixed direction of each objective: aspects are maximised, efficiency is minimised."""
    return tuple(OBJECTIVE_DIRECTIONS[name] for name in objectives)


# --- finding a sweep ----------------------------------------------------------------------------


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

    @property
    def mlflow_note(self) -> str | None:
        """Why MLflow is skipped for this source, or None when the tracking store can be tried."""
        if self.mlflow_unavailable:
            return self.mlflow_unavailable
        return None if self.parent_run_id else "no MLflow parent run is known for this table; skipping MLflow"

    def grid_path(self, trial_id) -> Path | None:
        """The trial's image grid on disk, when the sweep kept one."""
        path = self.sweep_dir / "trials" / str(trial_id) / "grid.png"
        return path if path.is_file() else None


def locate_sweep(sweep: str, storage: str | None = None, tracking_uri: str | None = None) -> SweepSource:
    """Resolve SWEEP: a `.parquet` file, a sweep name under the results root, or an MLflow parent run id.

    A parent run id is looked up first in the `sweep.json` files under the results root (no
    tracking store needed), then in the tracking store, whose parent run carries the sweep name in
    its `igmu.sweep` tag.
    """
    from igmu.sweep.engine import results_root

    if sweep.endswith(".parquet"):
        return _source_from_parquet(Path(sweep), tracking_uri)
    root = results_root(storage)
    if (root / sweep / "results.parquet").is_file():
        return _source_from_sweep_dir(root / sweep, root, tracking_uri)
    sweep_dir = _sweep_dir_by_parent_run(root, sweep) or _sweep_dir_from_mlflow(root, sweep, tracking_uri)
    if sweep_dir is not None:
        if not (sweep_dir / "results.parquet").is_file():
            raise UsageError(f"sweep {sweep_dir.name!r} (parent run {sweep}) has no results table yet "
                             f"(looked at {sweep_dir / 'results.parquet'}); has it finished?")
        return _source_from_sweep_dir(sweep_dir, root, tracking_uri, parent_run_id=sweep)
    known = sorted(path.parent.name for path in root.glob("*/results.parquet"))
    raise UsageError(f"unknown sweep {sweep!r}: not a sweep name under {root}, an MLflow parent run id or a "
                     f".parquet file; known sweeps: {', '.join(known) or 'none'}")


def _source_from_parquet(path: Path, tracking_uri: str | None) -> SweepSource:
    """A Parquet file given directly; it is a sweep's own table when a sweep.json sits next to it."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"no results table at {path}")
    if (path.parent / "sweep.json").is_file():
        # <root>/<sweep>/results.parquet: the default tracking store is <root>/mlflow.db.
        return _source_from_sweep_dir(path.parent, path.parent.parent, tracking_uri, table_path=path)
    label = path.parent.name if path.name == "results.parquet" else path.stem
    return SweepSource(label, path, path.parent,
                       mlflow_unavailable=f"{path.name} has no sweep.json next to it, so its MLflow parent run "
                                          "is unknown; skipping MLflow")


def _source_from_sweep_dir(sweep_dir: Path, root: Path, tracking_uri: str | None,
                           table_path: Path | None = None, parent_run_id: str | None = None) -> SweepSource:
    """A sweep folder under `root`; its parent run is the one given, else the one sweep.json records."""
    from igmu.sweep.tracking import default_tracking_uri

    parent_run_id = parent_run_id or _read_sweep_state(sweep_dir / "sweep.json").get("parent_run_id")
    uri = tracking_uri or default_tracking_uri(root)
    unavailable = None
    if not parent_run_id:
        unavailable = f"no parent run recorded in {sweep_dir / 'sweep.json'}; skipping MLflow"
    elif tracking_uri is None and not (root / "mlflow.db").is_file():
        unavailable = f"no tracking store at {root / 'mlflow.db'} (pass --tracking-uri); skipping MLflow"
    return SweepSource(sweep_dir.name, table_path or sweep_dir / "results.parquet", sweep_dir,
                       parent_run_id=parent_run_id, tracking_uri=uri, mlflow_unavailable=unavailable)


def _read_sweep_state(path: Path) -> dict:
    """sweep.json as a dict; an unreadable or missing file counts as empty (it is only a pointer)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _sweep_dir_by_parent_run(root: Path, parent_run_id: str) -> Path | None:
    """The sweep folder whose sweep.json records this parent run, without touching MLflow."""
    for state_file in sorted(root.glob("*/sweep.json")):
        if _read_sweep_state(state_file).get("parent_run_id") == parent_run_id:
            return state_file.parent
    return None


def _sweep_dir_from_mlflow(root: Path, run_id: str, tracking_uri: str | None) -> Path | None:
    """Ask the tracking store for the parent run and follow its `igmu.sweep` tag to the sweep folder.

    Only tried for text shaped like a run id and a store that exists: opening a SQLite URI creates
    the database, which a mistyped sweep name must not do.
    """
    from igmu.sweep.tracking import SWEEP_TAG, default_tracking_uri

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


def load_sweep_table(source: SweepSource) -> pd.DataFrame:
    """Read the results table, turning unreadable files and foreign tables into one-line errors."""
    try:
        table = pd.read_parquet(source.table_path)
    except Exception as err:  # pyarrow raises several unrelated types for a corrupt or non-Parquet file
        raise UsageError(f"cannot read results table {source.table_path}: {err}") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise UsageError(f"{source.table_path} is not an igmu results table: no column {missing[0]!r}")
    return table


# --- scored rows, fronts, knee ----------------------------------------------------------------------


@dataclass
class Frontier:
    """The Pareto front of a set of scored trials on some objectives."""

    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    scored: pd.DataFrame  # the trials taken into account, index 0..n-1
    on_front: np.ndarray  # bool mask over `scored`
    hypervolume: float
    knee: int | None  # row position in `scored`

    @property
    def front(self) -> pd.DataFrame:
        """Front rows, best first on the first objective (the order every table and plot uses)."""
        front = self.scored[self.on_front]
        ascending = self.directions[0] == MINIMISE
        return front.sort_values([self.objectives[0], "trial_id"], ascending=[ascending, True], kind="stable")

    @property
    def knee_trial(self):
        return None if self.knee is None else _plain(self.scored["trial_id"].iloc[self.knee])

    def points(self) -> np.ndarray:
        return self.scored[list(self.objectives)].to_numpy(dtype=float)


def is_early_stopped(table: pd.DataFrame) -> pd.Series:
    """Early stopping shows in the status, and in the `early_stopped` column of older tables."""
    stopped = table["status"] == EARLY_STOPPED
    if "early_stopped" in table.columns:
        stopped |= table["early_stopped"].astype("boolean").fillna(False).astype(bool)
    return stopped


def select_scored(table: pd.DataFrame, objectives: Sequence[str], include_stopped: bool = False) -> pd.DataFrame:
    """Trials that count: finished (or, if asked, early-stopped) with a finite value for every objective.

    Failed trials never count; their scores are NaN. Early-stopped trials are left out by default
    because they were judged on an interim budget. The result has an `early_stopped` bool column.
    """
    missing = [name for name in objectives if name not in table.columns]
    if missing:
        raise UsageError(f"the results table has no column {missing[0]!r}; it was written before that "
                         f"objective existed")
    stopped = is_early_stopped(table)
    allowed = (table["status"] == FINISHED) & ~stopped
    if include_stopped:
        allowed |= stopped & (table["status"] != "error")
    values = table[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    finite = np.all(np.isfinite(values), axis=1)
    keep = allowed.to_numpy() & finite
    scored = table[keep].copy()
    scored[list(objectives)] = values[keep]
    scored["early_stopped"] = stopped.to_numpy()[keep]
    return scored.reset_index(drop=True)


def frontier_of(scored: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> Frontier:
    """Front, hypervolume and knee of rows that are already known to be scored (see select_scored)."""
    objectives, directions = tuple(objectives), tuple(directions)
    points = scored[list(objectives)].to_numpy(dtype=float)
    return Frontier(objectives, directions, scored, non_dominated(points, directions),
                    hypervolume(points, directions), knee_point(points, directions))


def compute_frontier(table: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES,
                     include_stopped: bool = False, label: str = "the table",
                     directions: Sequence[str] | None = None) -> Frontier:
    """The front of a whole results table; bad objectives or no scored trial are a UsageError."""
    objectives = parse_objectives(objectives) if directions is None else tuple(objectives)
    directions = directions_for(objectives) if directions is None else tuple(directions)
    scored = select_scored(table, objectives, include_stopped)
    if scored.empty:
        raise UsageError(f"no scored trial in {label} for {', '.join(objectives)}: {_status_counts(table)}"
                         f"{'' if include_stopped else '; early-stopped trials count only with --include-stopped'}")
    return frontier_of(scored, objectives, directions)


def _status_counts(table: pd.DataFrame) -> str:
    counts = table["status"].value_counts()
    detail = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    return f"{len(table)} trials ({detail})" if len(table) else "0 trials"


# --- shaping the answer ----------------------------------------------------------------------------


def trial_params(row: pd.Series) -> dict:
    """The trial's hyperparameters; NaN marks a hyperparameter of another algorithm in the sweep."""
    params = {}
    for column, value in row.items():
        if str(column).startswith(PARAM_PREFIX) and not _missing(value):
            params[str(column)[len(PARAM_PREFIX):]] = _plain(value)
    return params


def score_names(objectives: Sequence[str] = ()) -> list[str]:
    """The five aspects, then any objective that is not an aspect (efficiency_seconds)."""
    return [*ASPECTS, *(name for name in objectives if name not in ASPECTS)]


def trial_scores(row: pd.Series, objectives: Sequence[str] = ()) -> dict:
    """The trial's score for each of `score_names(objectives)`; NaN becomes None (JSON has no NaN)."""
    return {name: _number(row.get(name)) for name in score_names(objectives)}


def frontier_json(frontier: Frontier) -> dict:
    """The `igmu pareto --json` document: objectives, front entries, hypervolume and knee trial id."""
    front = [{"trial_id": _plain(row["trial_id"]), "algorithm": _plain(row.get("algorithm")),
              "params": trial_params(row), "scores": trial_scores(row, frontier.objectives),
              "early_stopped": bool(row["early_stopped"])}
             for _, row in frontier.front.iterrows()]
    return {"objectives": list(frontier.objectives), "directions": list(frontier.directions), "front": front,
            "hypervolume": frontier.hypervolume, "knee": frontier.knee_trial,
            "scored_trials": len(frontier.scored)}


def front_rows(frontier: Frontier) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells of the front (trial, algorithm, scores, note, hyperparameters), for any table format."""
    scores = score_names(frontier.objectives)
    knee = frontier.knee_trial
    rows = []
    for _, row in frontier.front.iterrows():
        notes = [note for note, applies in (("knee", _plain(row["trial_id"]) == knee),
                                            ("early-stopped", bool(row["early_stopped"]))) if applies]
        rows.append([str(row["trial_id"]), str(row.get("algorithm", "")),
                     *(format_number(row.get(name)) for name in scores), ", ".join(notes),
                     format_params(trial_params(row))])
    return ["trial", "algorithm", *scores, "note", "hyperparameters"], rows


def format_front_table(frontier: Frontier, label: str = "") -> str:
    """The front as an aligned text table, with a title line and its hypervolume and knee below."""
    title = (f"Pareto front{' of ' + label if label else ''} on {objective_list(frontier)}: "
             f"{int(frontier.on_front.sum())} of {len(frontier.scored)} scored trials")
    return "\n".join([title, text_table(*front_rows(frontier)),
                      f"hypervolume: {format_number(frontier.hypervolume)}   knee: {frontier.knee_trial}"])


def front_summary(table, objectives: Sequence[str] | Mapping[str, str] = DEFAULT_OBJECTIVES) -> str:
    """The front of a finished sweep, for `igmu sweep` to print last; never raises on bad data.

    `table` is a results DataFrame or its rows (dicts); `objectives` a list of names or the sweep
    file's `{objective: direction}` mapping, whose directions are then used as given.
    """
    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    if isinstance(objectives, Mapping):
        names, directions = tuple(objectives), tuple(objectives.values())
    else:
        names, directions = tuple(objectives), None
    try:
        if frame.empty or any(column not in frame.columns for column in REQUIRED_COLUMNS):
            raise UsageError("no trials")
        return format_front_table(compute_frontier(frame, names, label="this sweep", directions=directions))
    except (UsageError, ValueError) as err:
        return f"Pareto front: none ({err})"


def objective_list(frontier: Frontier) -> str:
    return ", ".join(f"{name} ({direction})" for name, direction in zip(frontier.objectives, frontier.directions))


def format_params(params: Mapping) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in params.items())


def format_value(value) -> str:
    """A hyperparameter value, short: 4 significant digits, and integers stored as float (a column that
    is NaN for another algorithm's trials is a float column) shown as integers."""
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else f"{float(value):.4g}"
    return str(value)


def format_number(value, digits: int = 4) -> str:
    """Fixed decimals for scores (they live in [0, 1]); 'n/a' for a missing value."""
    if _missing(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(value)
    if number != 0 and (abs(number) < 10 ** -digits or abs(number) >= 1e6):
        return f"{number:.{digits}g}"
    return f"{number:.{digits}f}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [headers, *rows]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in lines)


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are values, not missing markers
        return False


def _plain(value):
    """numpy scalars to their Python equivalent, so json.dumps and equality checks just work."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _number(value) -> float | None:
    return None if _missing(value) else float(value)


# --- comparing algorithms ---------------------------------------------------------------------------


@dataclass
class AlgorithmResult:
    """One algorithm's trials across every compared sweep, its own front and its knee trial."""

    algorithm: str
    frontier: Frontier
    knee_source: SweepSource | None = None
    median_efficiency_seconds: float | None = None
    best_front: dict = field(default_factory=dict)

    @property
    def knee_row(self) -> pd.Series | None:
        return None if self.frontier.knee is None else self.frontier.scored.iloc[self.frontier.knee]

    @property
    def knee_grid(self) -> Path | None:
        row = self.knee_row
        if row is None or self.knee_source is None:
            return None
        return self.knee_source.grid_path(row["trial_id"])


def combine_tables(loaded: Sequence[tuple[SweepSource, pd.DataFrame]]) -> pd.DataFrame:
    """Stack several results tables, remembering each row's sweep in a `sweep` column."""
    frames = [table.assign(sweep=source.label) for source, table in loaded]
    return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()


def compare_algorithms(loaded: Sequence[tuple[SweepSource, pd.DataFrame]], objectives: Sequence[str] = DEFAULT_OBJECTIVES,
                       include_stopped: bool = False) -> list[AlgorithmResult]:
    """Group the scored trials of every sweep by algorithm and compute each algorithm's own front.

    Sorted by hypervolume (largest first), so the list reads as a leaderboard.
    """
    objectives = parse_objectives(objectives)
    directions = directions_for(objectives)
    combined = combine_tables(loaded)
    labels = ", ".join(source.label for source, _ in loaded)
    if "algorithm" not in combined.columns:
        raise UsageError(f"the results tables of {labels} have no 'algorithm' column")
    scored = select_scored(combined, objectives, include_stopped)
    if scored.empty:
        raise UsageError(f"no scored trial in {labels} for {', '.join(objectives)}: {_status_counts(combined)}")
    sources = {source.label: source for source, _ in loaded}
    results = []
    for algorithm, rows in scored.groupby("algorithm", sort=True):
        frontier = frontier_of(rows.reset_index(drop=True), objectives, directions)
        result = AlgorithmResult(str(algorithm), frontier)
        knee = result.knee_row
        result.knee_source = sources.get(knee["sweep"]) if knee is not None else None
        result.median_efficiency_seconds = _median(rows.get(EFFICIENCY_OBJECTIVE))
        result.best_front = _best_front_values(frontier)
        results.append(result)
    results.sort(key=lambda r: (-r.frontier.hypervolume, r.algorithm))
    return results


def _best_front_values(frontier: Frontier) -> dict:
    """Per aspect, the best score any front trial reached (each aspect is maximised)."""
    front = frontier.front
    best = {}
    for aspect in ASPECTS:
        values = pd.to_numeric(front[aspect], errors="coerce").dropna() if aspect in front else pd.Series(dtype=float)
        best[aspect] = float(values.max()) if len(values) else None
    return best


def _median(values: pd.Series | None) -> float | None:
    if values is None:
        return None
    finite = [float(v) for v in pd.to_numeric(values, errors="coerce") if math.isfinite(float(v))]
    return statistics.median(finite) if finite else None


def leaderboard(results: Sequence[AlgorithmResult]) -> list[dict]:
    """JSON-ready leaderboard rows, one per algorithm, in leaderboard order."""
    rows = []
    for result in results:
        knee = result.knee_row
        rows.append({
            "algorithm": result.algorithm,
            "scored_trials": len(result.frontier.scored),
            "front_size": int(result.frontier.on_front.sum()),
            "hypervolume": result.frontier.hypervolume,
            "best_front": result.best_front,
            "knee": None if knee is None else {
                "sweep": _plain(knee["sweep"]), "trial_id": _plain(knee["trial_id"]),
                "params": trial_params(knee), "scores": trial_scores(knee),
                "grid": str(result.knee_grid) if result.knee_grid else None},
            "median_efficiency_seconds": result.median_efficiency_seconds,
        })
    return rows


# --- MLflow -----------------------------------------------------------------------------------------


def child_runs(client, parent_run_id: str) -> list:
    """Every (not deleted) child run of the parent, page by page."""
    from igmu.sweep.tracking import PARENT_TAG

    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  max_results=SEARCH_PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def tag_front(client, parent_run_id: str, front_run_ids: Iterable[str],
              front_trial_ids: Iterable = ()) -> tuple[int, int]:
    """Tag every child run of the parent `pareto=true` (on the front) or `pareto=false` (the rest).

    Every child is written, so tags left by an earlier analysis on other objectives never go stale.
    A front trial whose table row lacks its run id is matched by its `igmu.trial_id` tag.
    Returns (runs tagged true, runs tagged false).
    """
    from igmu.sweep.tracking import TRIAL_TAG

    run_ids = {str(run_id) for run_id in front_run_ids}
    trial_ids = {str(trial_id) for trial_id in front_trial_ids}
    on, off = 0, 0
    for run in child_runs(client, parent_run_id):
        on_front = run.info.run_id in run_ids or run.data.tags.get(TRIAL_TAG) in trial_ids
        client.set_tag(run.info.run_id, PARETO_TAG, "true" if on_front else "false")
        on, off = on + on_front, off + (not on_front)
    return on, off


def front_run_ids(frontier: Frontier) -> list[str]:
    if "mlflow_run_id" not in frontier.scored.columns:
        return []
    return [str(run_id) for run_id in frontier.front["mlflow_run_id"] if not _missing(run_id)]


def record_front(source: SweepSource, frontier: Frontier, artifacts: Sequence[Path]) -> str | None:
    """Tag the front in MLflow and log the plot files to the parent run; return a note when skipped.

    A tracking store that refuses (the parent run is gone, the server is down) is not the user's
    input being wrong, and the analysis itself is already printed, so it becomes a note, not an error.
    """
    if source.mlflow_note:
        return source.mlflow_note
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(source.tracking_uri)
    try:
        tag_front(client, source.parent_run_id, front_run_ids(frontier),
                  front_trial_ids=[str(t) for t in frontier.front["trial_id"]])
        client.set_tag(source.parent_run_id, PARETO_OBJECTIVES_TAG, ",".join(frontier.objectives))
        for path in artifacts:
            client.log_artifact(source.parent_run_id, str(path), artifact_path=PARETO_ARTIFACT_DIR)
    except MlflowException as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"could not update MLflow run {source.parent_run_id} at {source.tracking_uri}: {first_line}"
    return None
