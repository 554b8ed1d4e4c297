"""Pareto dominance over rows of scores: which rows no other row beats on every objective.

The sweep keeps the changed weights of its front (`tracking.keep_weights: front`), and the sweep layer
cannot import `igmu.analysis`, which sits above it; so the one definition of the front lives here and
`igmu.analysis.pareto` builds hypervolume and the knee on it. Conventions (directions, missing rows,
duplicates) are documented in `igmu.analysis.pareto`.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np

MAXIMISE = "max"
MINIMISE = "min"
VALID_DIRECTIONS = (MAXIMISE, MINIMISE)


def non_dominated(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Return a boolean mask over the rows of ``points`` that are on the Pareto front.

    Rows with any NaN or infinity are never on the front and cannot dominate other rows.
    """
    array, maximise = validated_points(points, directions)
    finite = finite_rows(array)
    mask = np.zeros(array.shape[0], dtype=bool)
    if finite.any():
        # keep_weakly: every copy of a front point stays on the front, not only the first.
        mask[finite] = moocore.is_nondominated(array[finite], maximise=maximise, keep_weakly=True)
    return mask


def validated_points(points: np.ndarray, directions: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
    """Return ``points`` as a float array and, per objective, whether it is maximised."""
    array = np.asarray(points, dtype=float)
    if array.ndim != 2:
        raise ValueError(
            f"points must be a 2-D array of shape [runs, objectives], got {array.ndim} dimension(s)"
        )
    if isinstance(directions, str):
        raise ValueError(
            f"directions must be a sequence with one of {VALID_DIRECTIONS} per objective, "
            f"not the single string {directions!r}"
        )
    directions = list(directions)
    if array.shape[1] == 0:
        raise ValueError("points must have at least one objective column")
    if len(directions) != array.shape[1]:
        raise ValueError(
            f"got {len(directions)} direction(s) for {array.shape[1]} objective column(s); "
            "give exactly one direction per column"
        )
    for direction in directions:
        if direction not in VALID_DIRECTIONS:
            raise ValueError(
                f"invalid direction {direction!r}: each direction must be one of {VALID_DIRECTIONS}"
            )
    return array, [direction == MAXIMISE for direction in directions]


def finite_rows(points: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(points), axis=1)
