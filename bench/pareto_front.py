"""Time the Pareto front and exact hypervolume of random points in 2 to 5 objectives.

Usage: ``python bench/pareto_front.py [--json]``. Each timing is the best of several repeats on
the same seeded points, measured with ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from igmu.analysis.pareto import hypervolume, non_dominated

POINT_COUNT = 10_000
OBJECTIVE_COUNTS = (2, 3, 4, 5)
REPEATS = 5
SEED = 0
# Maximised scores in [0, 1] with the documented default reference (0 for "max").
DIRECTION = "max"


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Return the shortest time of ``repeats`` calls: the one least disturbed by other work."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def measure(objectives: int, point_count: int, repeats: int) -> dict[str, float | int]:
    points = np.random.default_rng(SEED).random((point_count, objectives))
    directions = [DIRECTION] * objectives
    return {
        "objectives": objectives,
        "front_seconds": best_time(lambda: non_dominated(points, directions), repeats),
        "hypervolume_seconds": best_time(lambda: hypervolume(points, directions), repeats),
        "front_size": int(non_dominated(points, directions).sum()),
    }


def print_table(point_count: int, results: list[dict[str, float | int]]) -> None:
    print(f"{point_count} random points, best of {REPEATS} repeats")
    print(f"{'objectives':>10}  {'front (s)':>10}  {'hypervolume (s)':>15}  {'front size':>10}")
    for row in results:
        print(
            f"{row['objectives']:>10}  {row['front_seconds']:>10.4f}  "
            f"{row['hypervolume_seconds']:>15.4f}  {row['front_size']:>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    arguments = parser.parse_args()

    results = [measure(k, POINT_COUNT, REPEATS) for k in OBJECTIVE_COUNTS]
    if arguments.json:
        print(json.dumps({"n": POINT_COUNT, "results": results}))
    else:
        print_table(POINT_COUNT, results)


if __name__ == "__main__":
    main()
