"""Pareto analysis of a sweep's results table: which trials are worth a look, and how algorithms compare.

`igmu pareto` and `igmu compare` (and the summary `igmu sweep` prints at the end) all start from the
same question: among the trials that were scored, which ones no other trial beats on every chosen
objective, in the directions the sweep file declared? The answer is computed on the results table
(one row per trial, defined in `igmu.sweep.results`) with the maths of `igmu.analysis.pareto`, and
written back to MLflow as a `pareto=true|false` tag on every child run and plots on the parent run,
so the MLflow UI can filter on `tags.pareto = 'true'`.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from igmu.analysis.pareto import (
    MINIMISE,
    hypervolume,
    knee_point,
    non_dominated,
)
from igmu.errors import UsageError
from igmu.metrics.base import ASPECTS
from igmu.sweep.results import (
    DEFAULT_OBJECTIVES,
    DEGENERATE,
    EARLY_STOPPED,
    EFFICIENCY_OBJECTIVE,
    ERROR,
    FINISHED,
    PARAM_PREFIX,
    REQUIRED_COLUMNS,
    STATUSES,
    SweepSource,
    objective_directions,
    split_view,
)

PARETO_TAG = "pareto"
# Set on the parent run, so a reader of the child tags knows which objectives they refer to.
PARETO_OBJECTIVES_TAG = "igmu.pareto_objectives"
PARETO_ARTIFACT_DIR = "pareto"
SEARCH_PAGE_SIZE = 1000


# --- objectives -------------------------------------------------------------------------------


def choose_objectives(requested: str | Sequence[str] | None, sources: Iterable[SweepSource] = ()) -> dict[str, str]:
    """name -> direction, in the given order (the first two are every plot's axes): each requested
    objective in the direction its sweep file declared, else in its natural direction. Nothing
    requested: the objectives every sweep declared (in the first one's order), the ones its search
    optimised; forgetting and preservation where the sweeps share fewer than two (bare tables)."""
    sources = list(sources)
    if requested is None:
        names = shared_objectives(sources)
    else:
        names = requested.split(",") if isinstance(requested, str) else list(requested)
    return objective_directions(names, declared_objectives(sources))


def shared_objectives(sources: Sequence[SweepSource]) -> list[str]:
    declared = [list(source.objectives) for source in sources if source.objectives]
    shared = [name for name in declared[0] if all(name in other for other in declared)] if declared else []
    return shared if len(shared) >= 2 else list(DEFAULT_OBJECTIVES)


def declared_objectives(sources: Iterable[SweepSource]) -> dict[str, str]:
    """The objectives the sweep files declared; sweeps that disagree on a direction cannot share a front."""
    merged: dict[str, str] = {}
    for source in sources:
        for name, direction in source.objectives.items():
            if merged.setdefault(name, direction) != direction:
                raise UsageError(f"the sweeps declare objective {name!r} both as max and as min; valid: sweeps "
                                 "whose sweep files agree on every objective's direction")
    return merged


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
    # Scored trials left out because their scorecard was degenerate (see select_scored).
    degenerate_left_out: int = 0

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


def is_degenerate(table: pd.DataFrame) -> pd.Series:
    """Trials whose scorecard judged most images unrecognisable; tables older than the flag have none."""
    if DEGENERATE not in table.columns:
        return pd.Series(False, index=table.index)
    return table[DEGENERATE].astype("boolean").fillna(False).astype(bool)


def select_scored(table: pd.DataFrame, objectives: Sequence[str], include_stopped: bool = False,
                  include_degenerate: bool = False) -> pd.DataFrame:
    """Trials that count: finished (or, if asked, early-stopped) with a finite value for every objective.

    Failed trials never count; their scores are NaN. Early-stopped trials are left out by default
    because they were judged on an interim budget, degenerate ones because their forgetting is a
    broken model's blank or noise images. The result has `early_stopped` and `degenerate` bool columns.
    """
    missing = [name for name in objectives if name not in table.columns]
    if missing:
        raise UsageError(f"the results table has no column {missing[0]!r}; it was written before that "
                         f"objective existed")
    stopped, degenerate = is_early_stopped(table), is_degenerate(table)
    allowed = (table["status"] == FINISHED) & ~stopped
    if include_stopped:
        allowed |= stopped & (table["status"] != ERROR)
    if not include_degenerate:
        allowed &= ~degenerate
    values = table[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    finite = np.all(np.isfinite(values), axis=1)
    keep = allowed.to_numpy() & finite
    scored = table[keep].copy()
    scored[list(objectives)] = values[keep]
    scored["early_stopped"] = stopped.to_numpy()[keep]
    scored["degenerate"] = degenerate.to_numpy()[keep]
    return scored.reset_index(drop=True)


def degenerate_left_out(table: pd.DataFrame, objectives: Sequence[str], include_stopped: bool = False) -> pd.DataFrame:
    """The trials select_scored would keep but for their degenerate flag."""
    candidates = select_scored(table, objectives, include_stopped, include_degenerate=True)
    return candidates[candidates["degenerate"]]


def left_out_note(left_out: int, per_algorithm: Mapping[str, int] | None = None) -> str:
    """What the analysis says about the degenerate trials it left out."""
    detail = ", ".join(f"{algorithm} {count}" for algorithm, count in sorted((per_algorithm or {}).items()))
    return (f"left out {left_out} degenerate trial(s){f' ({detail})' if detail else ''}: most of their images "
            f"are unrecognisable (blank, noise or blur); --include-degenerate keeps them")


def frontier_of(scored: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> Frontier:
    """Front, hypervolume and knee of rows that are already known to be scored (see select_scored)."""
    objectives, directions = tuple(objectives), tuple(directions)
    points = scored[list(objectives)].to_numpy(dtype=float)
    return Frontier(objectives, directions, scored, non_dominated(points, directions),
                    hypervolume(points, directions), knee_point(points, directions))


def with_directions(objectives: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """name -> direction; bare names take their natural direction."""
    return dict(objectives) if isinstance(objectives, Mapping) else objective_directions(objectives)


def compute_frontier(table: pd.DataFrame, objectives: Mapping[str, str] | Sequence[str] = DEFAULT_OBJECTIVES,
                     include_stopped: bool = False, label: str = "the table",
                     include_degenerate: bool = False) -> Frontier:
    """The front of a whole results table on `objectives` (name -> direction, or names in their
    natural directions); no scored trial is a UsageError."""
    objectives = with_directions(objectives)
    objectives, directions = tuple(objectives), tuple(objectives.values())
    scored = select_scored(table, objectives, include_stopped, include_degenerate)
    left_out = 0 if include_degenerate else len(degenerate_left_out(table, objectives, include_stopped))
    if scored.empty:
        raise UsageError(f"no scored trial in {label} for {', '.join(objectives)}: {_status_counts(table)}"
                         f"{'' if include_stopped else '; early-stopped trials count only with --include-stopped'}"
                         f"{f'; {left_out} degenerate trial(s) count only with --include-degenerate' if left_out else ''}")
    frontier = frontier_of(scored, objectives, directions)
    frontier.degenerate_left_out = left_out
    return frontier


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
    ties = interval_ties(frontier)
    front = [{"trial_id": _plain(row["trial_id"]), "algorithm": _plain(row.get("algorithm")),
              "params": trial_params(row), "scores": trial_scores(row, frontier.objectives),
              "early_stopped": bool(row["early_stopped"]), "degenerate": bool(row.get("degenerate", False)),
              "within_intervals_of": ties.get(_plain(row["trial_id"]), [])}
             for _, row in frontier.front.iterrows()]
    return {"objectives": list(frontier.objectives), "directions": list(frontier.directions), "front": front,
            "hypervolume": frontier.hypervolume, "knee": frontier.knee_trial,
            "scored_trials": len(frontier.scored), "degenerate_left_out": frontier.degenerate_left_out}


def interval_ties(frontier: Frontier) -> dict:
    """Front trial id -> the other front members it cannot be told apart from: their 95% intervals
    overlap on every objective (no entry for a front whose table carries no intervals)."""
    front = frontier.front
    columns = [(f"{name}_ci_low", f"{name}_ci_high") for name in frontier.objectives]
    if any(low not in front.columns or high not in front.columns for low, high in columns):
        return {}
    bounds = {_plain(row["trial_id"]): [(row[low], row[high]) for low, high in columns] for _, row in front.iterrows()}

    def overlap(a, b) -> bool:
        return all(not _missing(x[0]) and not _missing(y[0]) and x[0] <= y[1] and y[0] <= x[1] for x, y in zip(a, b))

    return {trial: [other for other in bounds if other != trial and overlap(bounds[trial], bounds[other])]
            for trial in bounds}


def front_rows(frontier: Frontier) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells of the front (trial, algorithm, scores, note, hyperparameters), for any table format."""
    scores = score_names(frontier.objectives)
    knee = frontier.knee_trial
    ties = interval_ties(frontier)
    rows = []
    for _, row in frontier.front.iterrows():
        tied = ties.get(_plain(row["trial_id"]))
        notes = [note for note, applies in (("knee", _plain(row["trial_id"]) == knee),
                                            ("early-stopped", bool(row["early_stopped"])),
                                            ("degenerate", bool(row.get("degenerate", False))),
                                            (f"within CI of {', '.join(map(str, tied or []))}", bool(tied)))
                 if applies]
        rows.append([str(row["trial_id"]), str(row.get("algorithm", "")),
                     *(format_number(row.get(name)) for name in scores), ", ".join(notes),
                     format_params(trial_params(row))])
    return ["trial", "algorithm", *scores, "note", "hyperparameters"], rows


def format_front_table(frontier: Frontier, label: str = "") -> str:
    """The front as an aligned text table, with a title line and its hypervolume and knee below."""
    left_out = (f" ({frontier.degenerate_left_out} degenerate left out; --include-degenerate keeps them)"
                if frontier.degenerate_left_out else "")
    title = (f"Pareto front{' of ' + label if label else ''} on {objective_list(frontier)}: "
             f"{int(frontier.on_front.sum())} of {len(frontier.scored)} scored trials{left_out}")
    return "\n".join([title, text_table(*front_rows(frontier)),
                      f"hypervolume: {format_number(frontier.hypervolume)}   knee: {frontier.knee_trial}"])


def front_summary(table, objectives: Mapping[str, str] | Sequence[str] = DEFAULT_OBJECTIVES) -> str:
    """The front of a finished sweep, for `igmu sweep` to print last; never raises on bad data.

    `table` is a results DataFrame or its rows (dicts); `objectives` the sweep file's
    `{objective: direction}` mapping, or names in their natural directions.
    """
    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    try:
        frame = split_view(frame, "validation")
        if frame.empty or any(column not in frame.columns for column in REQUIRED_COLUMNS):
            raise UsageError("no trials")
        return format_front_table(compute_frontier(frame, objectives, label="this sweep"))
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


def compare_algorithms(loaded: Sequence[tuple[SweepSource, pd.DataFrame]],
                       objectives: Mapping[str, str] | Sequence[str] = DEFAULT_OBJECTIVES,
                       include_stopped: bool = False, include_degenerate: bool = False) -> list[AlgorithmResult]:
    """Group the scored trials of every sweep by algorithm and compute each algorithm's own front.

    Sorted by hypervolume (largest first), so the list reads as a leaderboard.
    """
    objectives = with_directions(objectives)
    objectives, directions = tuple(objectives), tuple(objectives.values())
    combined = combine_tables(loaded)
    labels = ", ".join(source.label for source, _ in loaded)
    if "algorithm" not in combined.columns:
        raise UsageError(f"the results tables of {labels} have no 'algorithm' column")
    scored = select_scored(combined, objectives, include_stopped, include_degenerate)
    if scored.empty:
        raise UsageError(f"no scored trial in {labels} for {', '.join(objectives)}: {_status_counts(combined)}"
                         f"{'' if include_degenerate else '; degenerate trials count only with --include-degenerate'}")
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
    from igmu.sweep.tracking import ROLE_TAG, TRIAL_TAG

    run_ids = {str(run_id) for run_id in front_run_ids}
    trial_ids = {str(trial_id) for trial_id in front_trial_ids}
    on, off = 0, 0
    for run in child_runs(client, parent_run_id):
        if ROLE_TAG in run.data.tags:  # the defaults runs are no trials of the search
            continue
        on_front = run.info.run_id in run_ids or run.data.tags.get(TRIAL_TAG) in trial_ids
        client.set_tag(run.info.run_id, PARETO_TAG, "true" if on_front else "false")
        on, off = on + on_front, off + (not on_front)
    return on, off


def front_run_ids(frontier: Frontier) -> list[str]:
    if "mlflow_run_id" not in frontier.scored.columns:
        return []
    return [str(run_id) for run_id in frontier.front["mlflow_run_id"] if not _missing(run_id)]


def summary_metrics(table: pd.DataFrame, frontier: Frontier | None) -> dict[str, float]:
    """A sweep's summary as parent-run metrics: trials per status, and when some trial was scored the
    front's size, its hypervolume and the best value of each objective among the scored trials."""
    metrics = {"trials_total": float(len(table)),
               **{f"trials_{status}": float((table["status"] == status).sum()) for status in STATUSES}}
    if frontier is None:
        return metrics
    metrics["front_size"] = float(frontier.on_front.sum())
    metrics["hypervolume"] = float(frontier.hypervolume)
    for name, direction in zip(frontier.objectives, frontier.directions):
        values = frontier.scored[name]
        metrics[f"best_{name}"] = float(values.min() if direction == MINIMISE else values.max())
    return {name: value for name, value in metrics.items() if math.isfinite(value)}


def record_summary(source: SweepSource, metrics: Mapping[str, float]) -> str | None:
    """Log the summary metrics to the sweep's parent run; a note when MLflow is skipped or refuses."""
    if source.mlflow_note:
        return source.mlflow_note
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    now = int(1000 * time.time())
    try:
        MlflowClient(source.tracking_uri).log_batch(
            source.parent_run_id, metrics=[Metric(name, value, now, 0) for name, value in metrics.items()])
    except MlflowException as err:
        return _mlflow_note(source, err)
    return None


def _mlflow_note(source: SweepSource, err: Exception) -> str:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"could not update MLflow run {source.parent_run_id} at {source.tracking_uri}: {first_line}"


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
        return _mlflow_note(source, err)
    return None
