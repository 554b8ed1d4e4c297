"""Check `igmu compare` on a real sweep against its Parquet table, recomputed independently.

Usage: python bench/compare_check.py SWEEP [--objectives forgetting,preservation,quality] [--out DIR] [--storage ROOT]

Runs `igmu compare SWEEP --json` (which also writes the Markdown/HTML report to --out) and, for every
algorithm, recomputes from `<results>/SWEEP/results.parquet` alone: the scored trials (finished, all
validation objectives `val_<aspect>` finite, not flagged `val_degenerate`), the front by a brute-force
O(n^2) dominance check, the hypervolume by calling
moocore directly on all scored points (reference 0 for every maximised aspect), the best front value
per aspect and the median efficiency. Prints one line per algorithm and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys

import moocore
import numpy as np
import pandas as pd

from igmu.metrics.base import ASPECTS
from igmu.sweep.results import FINISHED, TABLE_FILE, results_root


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a >= b) and np.any(a > b))


def brute_force_front(points: np.ndarray) -> list[int]:
    return [i for i in range(len(points)) if not any(dominates(points[j], points[i]) for j in range(len(points)))]


def direct_hypervolume(points: np.ndarray) -> float:
    return float(moocore.hypervolume(points, ref=np.zeros(points.shape[1]), maximise=True))


def validation_scores(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its validation scores under the bare aspect names, degenerate trials dropped."""
    renamed = table.rename(columns={f"val_{aspect}": aspect for aspect in ASPECTS})
    return renamed[~renamed["val_degenerate"].fillna(False).astype(bool)]


def expected(table: pd.DataFrame, objectives: list[str]) -> dict[str, dict]:
    table = validation_scores(table)
    scored = table[(table["status"] == FINISHED) & table[objectives].notna().all(axis=1)]
    out = {}
    for algorithm, rows in scored.groupby("algorithm"):
        points = rows[objectives].to_numpy(float)
        front = rows.iloc[brute_force_front(points)]
        out[algorithm] = {"scored_trials": len(rows), "front_size": len(front),
                          "front_ids": sorted(front["trial_id"]),
                          "hypervolume": direct_hypervolume(points),
                          "best_front": {a: float(front[a].max()) for a in ASPECTS},
                          "median_efficiency_seconds": statistics.median(rows["efficiency_seconds"])}
    return out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep")
    parser.add_argument("--objectives", default="forgetting,preservation,quality")
    parser.add_argument("--out", default="report")
    parser.add_argument("--storage", default=None, help="results root (default: igmu's)")
    args = parser.parse_args()
    objectives = args.objectives.split(",")
    where = ["--storage", args.storage] if args.storage else []
    result = subprocess.run([sys.executable, "-m", "igmu.cli", "compare", args.sweep, *where, "--objectives",
                             args.objectives, "--out", args.out, "--json"], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"igmu compare failed: {result.stderr.strip()}")
    board = {row["algorithm"]: row for row in json.loads(result.stdout)["leaderboard"]}
    truth = expected(pd.read_parquet(results_root(args.storage) / args.sweep / TABLE_FILE), objectives)
    failures = 0
    if set(board) != set(truth):
        print(f"algorithms differ: report {sorted(board)} vs table {sorted(truth)}")
        failures += 1
    for algorithm in sorted(set(board) & set(truth)):
        got, want = board[algorithm], truth[algorithm]
        checks = {
            "scored_trials": got["scored_trials"] == want["scored_trials"],
            "front_size": got["front_size"] == want["front_size"],
            "hypervolume": close(got["hypervolume"], want["hypervolume"]),
            "best_front": all(close(got["best_front"][a], want["best_front"][a]) for a in ASPECTS),
            "median_efficiency": close(got["median_efficiency_seconds"], want["median_efficiency_seconds"]),
            "knee_on_front": got["knee"]["trial_id"] in want["front_ids"],
        }
        failures += not all(checks.values())
        print(f"{algorithm:<10} trials {want['scored_trials']:>3} front {want['front_size']:>2} "
              f"HV {want['hypervolume']:.4f} knee {got['knee']['trial_id']} "
              f"{'OK' if all(checks.values()) else 'MISMATCH ' + str([k for k, v in checks.items() if not v])}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
