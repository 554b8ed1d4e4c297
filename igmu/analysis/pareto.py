"""Pareto analysis of scored runs: fronts, non-dominated ranks, hypervolume and a knee point.

Pure numpy computation with no I/O, so the CLI and reports can call it on any table of scores.

Every function takes ``points``, an ``[n, k]`` array with one row per run and one column per
objective, and ``directions``, a sequence of ``k`` strings that are each ``"max"`` or ``"min"``.
Rows holding any NaN or infinity are treated as missing: they are never on a front and are ignored
when deciding whether other rows are dominated.

Row ``a`` dominates row ``b`` when ``a`` is at least as good as ``b`` in every objective and
strictly better in at least one. Exact duplicates therefore never dominate each other, so every
copy of a front point is on the front.

Internally every objective is turned into one to minimise by negating the ``"max"`` columns.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

import numpy as np

MAXIMISE = "max"
MINIMISE = "min"
VALID_DIRECTIONS = (MAXIMISE, MINIMISE)

# All igmu aspect scores lie in [0, 1], so 0 is the worst a maximised score can be.
DEFAULT_MAX_REFERENCE = 0.0
# The default reference for a minimised objective sits this fraction of the observed range
# beyond the worst value, so the worst points still enclose some volume.
REFERENCE_MARGIN_FRACTION = 0.1
# Used instead of the observed range when every value is equal: the width of the [0, 1] score scale.
UNIT_SCORE_RANGE = 1.0

EXACT_HYPERVOLUME_MAX_OBJECTIVES = 3

# Rows of a block compared at once against the front found so far when k >= 3: big enough that
# numpy does the work, small enough that the [front, block, k] comparison stays a few MiB.
FRONT_BLOCK_ROWS = 256


def non_dominated(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Return a boolean mask over the rows of ``points`` that are on the Pareto front.

    Rows with any NaN or infinity are never on the front and cannot dominate other rows.
    Two objectives use an ``O(n log n)`` sort-and-sweep; three or more compare sorted blocks of
    rows against the front found so far, vectorised with numpy, so the cost grows with
    ``n * front size`` (milliseconds for 10,000 random points, about a second when all 10,000
    are on the front).
    """
    minimised = _as_minimisation(points, directions)
    finite = _finite_rows(minimised)
    mask = np.zeros(minimised.shape[0], dtype=bool)
    mask[finite] = _front_mask_minimised(minimised[finite])
    return mask


def non_dominated_sort(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Return the non-domination rank of every row: 0 for the front, 1 for the next front, ...

    A row's rank is found by peeling fronts off the remaining rows one at a time.
    Rows with any NaN or infinity get rank -1.
    """
    minimised = _as_minimisation(points, directions)
    ranks = np.full(minimised.shape[0], -1, dtype=int)
    remaining = np.flatnonzero(_finite_rows(minimised))
    rank = 0
    while remaining.size:
        on_front = _front_mask_minimised(minimised[remaining])
        ranks[remaining[on_front]] = rank
        remaining = remaining[~on_front]
        rank += 1
    return ranks


def hypervolume(
    points: np.ndarray,
    directions: Sequence[str],
    reference: Sequence[float] | None = None,
) -> float:
    """Return the exact volume dominated by the finite rows of ``points``, bounded by ``reference``.

    ``reference`` is given in the same units and orientation as ``points``. Only points that are
    strictly better than the reference in every objective contribute; the rest add nothing.
    Implemented exactly for 2 objectives (sort and sum rectangles) and 3 objectives (sweep along
    the third objective, keeping the 2-D staircase of the slice up to date); a single objective
    gives the length of the best point's interval; more than 3 objectives raise ``ValueError``.

    Default reference, per objective, when ``reference`` is None:

    * ``"max"``: 0.0, the lowest possible igmu aspect score (scores lie in [0, 1]).
    * ``"min"``: ``worst + 0.1 * (worst - best)``, where ``worst`` and ``best`` are the largest
      and smallest finite observed values of that objective; when they are equal the margin is
      ``0.1 * 1.0``, i.e. 10% of the width of the [0, 1] score scale.

    With no finite rows the result is 0.0.
    """
    minimised = _as_minimisation(points, directions)
    objectives = minimised.shape[1]
    if objectives > EXACT_HYPERVOLUME_MAX_OBJECTIVES:
        raise ValueError(
            f"exact hypervolume is implemented for 2-3 objectives, got {objectives} objectives"
        )
    finite_points = minimised[_finite_rows(minimised)]
    if finite_points.shape[0] == 0:
        return 0.0
    if reference is None:
        reference_minimised = _default_reference_minimised(finite_points, directions)
    else:
        reference_minimised = _reference_as_minimisation(reference, directions)

    inside = np.all(finite_points < reference_minimised, axis=1)
    front = _unique_front_minimised(finite_points[inside])
    if front.shape[0] == 0:
        return 0.0
    if objectives == 1:
        return float(reference_minimised[0] - front[:, 0].min())
    if objectives == 2:
        return _hypervolume_2d(front, reference_minimised)
    return _hypervolume_3d(front, reference_minimised)


def knee_point(points: np.ndarray, directions: Sequence[str]) -> int | None:
    """Return the row index of the most balanced point on the front, or None with no finite rows.

    Each objective is normalised over the front to [0, 1] with 1 the best value (an objective
    that is constant over the front normalises to 1). The knee is the front point whose worst
    normalised objective is highest; ties go to the larger sum of normalised objectives, then to
    the lower row index.
    """
    front_rows = np.flatnonzero(non_dominated(points, directions))
    if front_rows.size == 0:
        return None
    # Negating the minimised form orients every objective so that larger is better.
    higher_is_better = -_as_minimisation(points, directions)[front_rows]
    normalised = _normalise_columns_to_unit(higher_is_better)
    worst_objective = normalised.min(axis=1)
    total = normalised.sum(axis=1)
    # np.lexsort sorts by its last key first: best worst-objective, then best total, then index.
    order = np.lexsort((front_rows, -total, -worst_objective))
    return int(front_rows[order[0]])


# --- validation and orientation ------------------------------------------------------------


def _as_minimisation(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Validate the inputs and return a float copy of ``points`` with "max" columns negated."""
    array = np.asarray(points, dtype=float)
    if array.ndim != 2:
        raise ValueError(
            f"points must be a 2-D array of shape [runs, objectives], got {array.ndim} dimension(s)"
        )
    signs = _direction_signs(directions, array.shape[1])
    return array * signs


def _direction_signs(directions: Sequence[str], objectives: int) -> np.ndarray:
    """Return +1 for each "min" and -1 for each "max" direction, after validating them."""
    if isinstance(directions, str):
        raise ValueError(
            f"directions must be a sequence with one of {VALID_DIRECTIONS} per objective, "
            f"not the single string {directions!r}"
        )
    directions = list(directions)
    if objectives == 0:
        raise ValueError("points must have at least one objective column")
    if len(directions) != objectives:
        raise ValueError(
            f"got {len(directions)} direction(s) for {objectives} objective column(s); "
            "give exactly one direction per column"
        )
    for direction in directions:
        if direction not in VALID_DIRECTIONS:
            raise ValueError(
                f"invalid direction {direction!r}: each direction must be one of {VALID_DIRECTIONS}"
            )
    return np.array([-1.0 if d == MAXIMISE else 1.0 for d in directions])


def _reference_as_minimisation(reference: Sequence[float], directions: Sequence[str]) -> np.ndarray:
    """Validate a user-given reference point and orient it like the minimised points."""
    signs = _direction_signs(directions, len(directions))
    reference_array = np.asarray(reference, dtype=float)
    if reference_array.shape != signs.shape:
        raise ValueError(
            f"reference must have one value per objective ({signs.size}), "
            f"got shape {reference_array.shape}"
        )
    if not np.all(np.isfinite(reference_array)):
        raise ValueError(f"reference must be finite, got {reference_array.tolist()}")
    return reference_array * signs


def _default_reference_minimised(
    finite_points: np.ndarray, directions: Sequence[str]
) -> np.ndarray:
    """Return the documented default reference point, already in minimisation form."""
    reference = np.empty(finite_points.shape[1])
    for column, direction in enumerate(directions):
        values = finite_points[:, column]
        if direction == MAXIMISE:
            reference[column] = -DEFAULT_MAX_REFERENCE
            continue
        worst, best = values.max(), values.min()
        observed_range = worst - best
        scale = observed_range if observed_range > 0 else UNIT_SCORE_RANGE
        reference[column] = worst + REFERENCE_MARGIN_FRACTION * scale
    return reference


def _finite_rows(points: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(points), axis=1)


# --- fronts, all on finite points to minimise ----------------------------------------------


def _front_mask_minimised(points: np.ndarray) -> np.ndarray:
    """Return the front mask of finite points to minimise; duplicates share their row's verdict."""
    if points.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    unique_rows, inverse = _unique_lexsorted(points)
    if unique_rows.shape[1] == 2:
        unique_on_front = _front_of_unique_lexsorted_2d(unique_rows)
    else:
        unique_on_front = _front_of_unique_lexsorted_blocked(unique_rows)
    return unique_on_front[inverse]


def _unique_front_minimised(points: np.ndarray) -> np.ndarray:
    """Return the distinct front rows of finite points to minimise, in lexicographic order."""
    if points.shape[0] == 0:
        return points
    unique_rows, _ = _unique_lexsorted(points)
    if unique_rows.shape[1] == 2:
        return unique_rows[_front_of_unique_lexsorted_2d(unique_rows)]
    return unique_rows[_front_of_unique_lexsorted_blocked(unique_rows)]


def _unique_lexsorted(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct rows sorted lexicographically and, per input row, its distinct row."""
    # np.lexsort uses its last key as the primary one, so feed the columns in reverse.
    order = np.lexsort(points.T[::-1])
    sorted_rows = points[order]
    starts_new_row = np.ones(sorted_rows.shape[0], dtype=bool)
    starts_new_row[1:] = np.any(sorted_rows[1:] != sorted_rows[:-1], axis=1)
    inverse = np.empty(points.shape[0], dtype=int)
    inverse[order] = np.cumsum(starts_new_row) - 1
    return sorted_rows[starts_new_row], inverse


def _front_of_unique_lexsorted_2d(rows: np.ndarray) -> np.ndarray:
    """Sweep distinct rows sorted by (x, y): a row is on the front iff its y beats every earlier y.

    Every earlier row has x no larger, so an earlier y that is no larger means domination.
    """
    ys = rows[:, 1]
    best_earlier_y = np.empty_like(ys)
    best_earlier_y[0] = np.inf
    best_earlier_y[1:] = np.minimum.accumulate(ys)[:-1]
    return ys < best_earlier_y


def _front_of_unique_lexsorted_blocked(rows: np.ndarray) -> np.ndarray:
    """Find the front of distinct lexicographically sorted rows, a block of rows at a time.

    A dominating row is always lexicographically smaller than the row it dominates, so rows are
    only ever compared with earlier ones, and a row accepted onto the front is never removed.
    Because the rows are distinct, "no worse in every objective" already implies "strictly better
    in one".
    """
    on_front = np.zeros(rows.shape[0], dtype=bool)
    front = rows[:0]
    for start in range(0, rows.shape[0], FRONT_BLOCK_ROWS):
        block = rows[start : start + FRONT_BLOCK_ROWS]
        survivors = ~_dominated_by_any(front, block)
        survivors &= ~_dominated_within_block(block)
        on_front[start : start + block.shape[0]] = survivors
        front = np.concatenate([front, block[survivors]])
    return on_front


def _dominated_by_any(front: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Return, per block row, whether some (distinct) front row is no worse in every objective."""
    if front.shape[0] == 0:
        return np.zeros(block.shape[0], dtype=bool)
    no_worse = np.all(front[:, None, :] <= block[None, :, :], axis=2)
    return no_worse.any(axis=0)


def _dominated_within_block(block: np.ndarray) -> np.ndarray:
    """Return, per block row, whether another row of the (distinct) block dominates it."""
    no_worse = np.all(block[:, None, :] <= block[None, :, :], axis=2)
    np.fill_diagonal(no_worse, False)
    return no_worse.any(axis=0)


def _normalise_columns_to_unit(values: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1] by its min and max; a constant column becomes all ones."""
    low = values.min(axis=0)
    span = values.max(axis=0) - low
    constant = span == 0
    normalised = (values - low) / np.where(constant, 1.0, span)
    normalised[:, constant] = 1.0
    return normalised


# --- exact hypervolume, on distinct front points strictly inside the reference --------------


def _hypervolume_2d(front: np.ndarray, reference: np.ndarray) -> float:
    """Sum the rectangles of the staircase; ``front`` is sorted by x, so y is decreasing."""
    xs, ys = front[:, 0], front[:, 1]
    next_xs = np.append(xs[1:], reference[0])
    return float(np.sum((next_xs - xs) * (reference[1] - ys)))


def _hypervolume_3d(front: np.ndarray, reference: np.ndarray) -> float:
    """Sweep the points in increasing z, multiplying each slice's 2-D area by its thickness."""
    by_z = front[np.argsort(front[:, 2], kind="stable")]
    next_zs = np.append(by_z[1:, 2], reference[2])
    staircase = _Staircase2D(reference_x=reference[0], reference_y=reference[1])
    volume = 0.0
    for (x, y, z), next_z in zip(by_z.tolist(), next_zs.tolist()):
        staircase.insert(x, y)
        volume += staircase.area * (next_z - z)
    return volume


class _Staircase2D:
    """The 2-D front of the points inserted so far (to minimise) and the area it dominates.

    ``xs`` increase and ``ys`` strictly decrease. Each insert costs a binary search plus work
    proportional to the points it removes, so a whole sweep is ``O(n log n)`` plus list shifts.
    """

    def __init__(self, reference_x: float, reference_y: float) -> None:
        self.reference_x = reference_x
        self.reference_y = reference_y
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.area = 0.0

    def insert(self, x: float, y: float) -> None:
        last_not_right = bisect_right(self.xs, x) - 1
        if last_not_right >= 0 and self.ys[last_not_right] <= y:
            return  # an existing point is no worse in both objectives
        first_removed = bisect_left(self.xs, x)
        end_removed = first_removed
        while end_removed < len(self.ys) and self.ys[end_removed] >= y:
            end_removed += 1
        self.area += self._area_gained(x, y, first_removed, end_removed)
        self.xs[first_removed:end_removed] = [x]
        self.ys[first_removed:end_removed] = [y]

    def _area_gained(self, x: float, y: float, first_removed: int, end_removed: int) -> float:
        """New area over [x, x_bound], where the new point becomes the lowest step."""
        x_bound = self.xs[end_removed] if end_removed < len(self.xs) else self.reference_x
        new_area = (x_bound - x) * (self.reference_y - y)
        old_area = 0.0
        # Between x and the first removed point, the old height is set by the point to the left.
        step_start = self.xs[first_removed] if end_removed > first_removed else x_bound
        if first_removed > 0:
            old_area += (step_start - x) * (self.reference_y - self.ys[first_removed - 1])
        for index in range(first_removed, end_removed):
            step_end = self.xs[index + 1] if index + 1 < end_removed else x_bound
            old_area += (step_end - self.xs[index]) * (self.reference_y - self.ys[index])
        return new_area - old_area
