"""Defaults beside tuned, both on the held-out test split: how much of each algorithm's standing in a
comparison comes from tuning.

- **defaults**: every algorithm run once at its published defaults (the held-out stage's defaults
  runs, `defaults.parquet` beside the results table), scored on the test split;
- **tuned**: every algorithm's front member (on the validation scores the search saw) that adds most
  to its front's hypervolume, with the test scores the held-out stage measured for it, beside the
  trials the search spent on that algorithm and their seconds.

Within each table, a score whose 95% interval overlaps the best row's interval on that aspect is
marked as tied with it: the gap between them is within sampling noise. A row whose test scorecard
is degenerate (most images unrecognisable) is marked so and is never the best row an aspect's ties
are measured against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from igmu.analysis.frontier import AlgorithmResult, format_number
from igmu.analysis.pareto import hypervolume
from igmu.metrics.base import ASPECTS
from igmu.sweep.results import DEFAULTS_FILE, DEGENERATE, EFFICIENCY_OBJECTIVE, TEST_PREFIX, VAL_PREFIX, SweepSource

# Marks a score whose interval overlaps the best score's interval in its table.
TIED = "~"


def hypervolume_contributions(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Per point, the hypervolume lost when it is left out (the reference stays the full set's)."""
    total = hypervolume(points, directions)
    return np.array([total - hypervolume(np.delete(points, i, axis=0), directions) for i in range(len(points))])


def best_contributor(result: AlgorithmResult) -> pd.Series:
    """The algorithm's front member that adds most to its front's hypervolume (ties: the first)."""
    front = result.frontier.front
    if len(front) == 1:
        return front.iloc[0]
    points = front[list(result.frontier.objectives)].to_numpy(dtype=float)
    contributions = hypervolume_contributions(points, result.frontier.directions)
    return front.iloc[int(np.argmax(contributions))]


def test_scores(row) -> tuple[dict, dict]:
    """A stored row's test scores and 95% intervals per aspect (None where not measured)."""
    scores, intervals = {}, {}
    for aspect in ASPECTS:
        value = _float(row.get(TEST_PREFIX + aspect))
        scores[aspect] = value
        low, high = _float(row.get(f"{TEST_PREFIX}{aspect}_ci_low")), _float(row.get(f"{TEST_PREFIX}{aspect}_ci_high"))
        intervals[aspect] = [low, high] if low is not None and high is not None else None
    return scores, intervals


def test_degenerate(row) -> bool:
    """Whether a stored row's test scorecard was flagged degenerate (rows before the flag: no)."""
    value = row.get(TEST_PREFIX + DEGENERATE)
    return bool(value) if value is not None and value == value else False


def tuned_rows(results: Sequence[AlgorithmResult], sources: Sequence[SweepSource]) -> list[dict]:
    stored = _stored_tables(sources)
    rows = []
    for result in results:
        member = best_contributor(result)
        table = stored[member["sweep"]]
        own = table[table["trial_id"].astype(str) == str(member["trial_id"])].iloc[0]
        spent = pd.concat([t[t["algorithm"] == result.algorithm] for t in stored.values()])
        scores, intervals = test_scores(own)
        rows.append({"algorithm": result.algorithm, "sweep": member["sweep"], "trial_id": str(member["trial_id"]),
                     "validation": {a: _float(own.get(VAL_PREFIX + a, own.get(a))) for a in ASPECTS},
                     "scores": scores, "intervals": intervals, "degenerate": test_degenerate(own),
                     "trials": int(len(spent)),
                     "compute_seconds": float(pd.to_numeric(spent["trial_seconds"], errors="coerce").fillna(0).sum())})
    return mark_ties(rows)


def defaults_rows(sources: Sequence[SweepSource]) -> list[dict]:
    rows = {}
    for source in sources:
        path = source.sweep_dir / DEFAULTS_FILE
        if not path.is_file():
            continue
        for record in pd.read_parquet(path).to_dict("records"):
            scores, intervals = test_scores(record)
            rows[record["algorithm"]] = {"algorithm": record["algorithm"], "sweep": source.label,
                                         "scores": scores, "intervals": intervals,
                                         "degenerate": test_degenerate(record),
                                         "seconds": _float(record.get(EFFICIENCY_OBJECTIVE))}
    return mark_ties([rows[name] for name in sorted(rows)])


def mark_ties(rows: list[dict]) -> list[dict]:
    """Per aspect, whether each row's interval overlaps the interval of the row with the best score."""
    for aspect in ASPECTS:
        scored = [row for row in rows if row["scores"][aspect] is not None and not row.get("degenerate")]
        best = max(scored, key=lambda row: row["scores"][aspect], default=None)
        for row in rows:
            ties = row.setdefault("tied_with_best", {})
            ties[aspect] = bool(best is not None and row is not best and _overlap(row["intervals"][aspect],
                                                                                best["intervals"][aspect]))
    return rows


def _overlap(a, b) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def standing_table(rows: Sequence[dict], tuned: bool) -> tuple[list[str], list[list[str]]]:
    headers = ["algorithm", *(["trial"] if tuned else []), *(f"test {a} [95% CI]" for a in ASPECTS),
               *(["trials", "compute s"] if tuned else ["seconds"])]
    body = []
    for row in rows:
        cells = [_cell(row, aspect) for aspect in ASPECTS]
        extra = ([str(row["trials"]), format_number(row["compute_seconds"], 1)] if tuned
                 else [format_number(row["seconds"], 1)])
        name = row["algorithm"] + (" (degenerate)" if row.get("degenerate") else "")
        body.append([name, *([row["trial_id"]] if tuned else []), *cells, *extra])
    return headers, body


def _cell(row: dict, aspect: str) -> str:
    score, interval = row["scores"][aspect], row["intervals"][aspect]
    if score is None:
        return "n/a"
    text = format_number(score, 3)
    if interval:
        text += f" [{format_number(interval[0], 2)}, {format_number(interval[1], 2)}]"
    return text + (f" {TIED}" if row["tied_with_best"][aspect] else "")


def _stored_tables(sources: Sequence[SweepSource]) -> dict[str, pd.DataFrame]:
    return {source.label: pd.read_parquet(source.table_path) for source in sources}


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
