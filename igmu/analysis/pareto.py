"""Pareto analysis of scored runs: fronts, hypervolume and a knee point.

No I/O, so the CLI and reports can call it on any table of scores. Dominance and hypervolume come
from moocore, which is exact in any number of objectives; this module adds the input checks, the
handling of missing scores, the default reference point and the knee.

Every function takes ``points``, an ``[n, k]`` array with one row per run and one column per
objective, and ``directions``, a sequence of ``k`` strings that are each ``"max"`` or ``"min"``.
Rows holding any NaN or infinity are treated as missing: they are never on a front and are ignored
when deciding whether other rows are dominated.

Row ``a`` dominates row ``b`` when ``a`` is at least as good as ``b`` in every objective and
strictly better in at least one. Exact duplicates therefore never dominate each other, so every
copy of a front point is on the front.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np

# Dominance itself lives in the sweep layer, which keeps the front's weights (see igmu.sweep.dominance).
from igmu.sweep.dominance import MAXIMISE, MINIMISE, VALID_DIRECTIONS, finite_rows, non_dominated, validated_points

__all__ = ["MAXIMISE", "MINIMISE", "VALID_DIRECTIONS", "hypervolume", "knee_point", "non_dominated"]

# All igmu aspect scores lie in [0, 1], so 0 is the worst a maximised score can be.
DEFAULT_MAX_REFERENCE = 0.0
# The default reference for a minimised objective sits this fraction of the observed range
# beyond the worst value, so the worst points still enclose some volume.
REFERENCE_MARGIN_FRACTION = 0.1
# Used instead of the observed range when every value is equal: the width of the [0, 1] score scale.
UNIT_SCORE_RANGE = 1.0


def hypervolume(
    points: np.ndarray,
    directions: Sequence[str],
    reference: Sequence[float] | None = None,
) -> float:
    """Return the exact volume dominated by the finite rows of ``points``, bounded by ``reference``.

    ``reference`` is given in the same units and orientation as ``points``. Only points that are
    strictly better than the reference in every objective contribute; the rest add nothing.
    A single objective gives the length of the best point's interval.

    Default reference, per objective, when ``reference`` is None:

    * ``"max"``: 0.0, the lowest possible igmu aspect score (scores lie in [0, 1]).
    * ``"min"``: ``worst + 0.1 * (worst - best)``, where ``worst`` and ``best`` are the largest
      and smallest finite observed values of that objective; when they are equal the margin is
      ``0.1 * 1.0``, i.e. 10% of the width of the [0, 1] score scale.

    With no finite rows the result is 0.0.
    """
    array, maximise = validated_points(points, directions)
    finite_points = array[finite_rows(array)]
    if finite_points.shape[0] == 0:
        return 0.0
    if reference is None:
        reference_point = _default_reference(finite_points, maximise)
    else:
        reference_point = _validated_reference(reference, len(maximise))
    return float(moocore.hypervolume(finite_points, ref=reference_point, maximise=maximise))


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
    array, maximise = validated_points(points, directions)
    higher_is_better = array[front_rows] * np.where(maximise, 1.0, -1.0)
    normalised = _normalise_columns_to_unit(higher_is_better)
    worst_objective = normalised.min(axis=1)
    total = normalised.sum(axis=1)
    # np.lexsort sorts by its last key first: best worst-objective, then best total, then index.
    order = np.lexsort((front_rows, -total, -worst_objective))
    return int(front_rows[order[0]])


def _validated_reference(reference: Sequence[float], objectives: int) -> np.ndarray:
    reference_array = np.asarray(reference, dtype=float)
    if reference_array.shape != (objectives,):
        raise ValueError(
            f"reference must have one value per objective ({objectives}), "
            f"got shape {reference_array.shape}"
        )
    if not np.all(np.isfinite(reference_array)):
        raise ValueError(f"reference must be finite, got {reference_array.tolist()}")
    return reference_array


def _default_reference(finite_points: np.ndarray, maximise: Sequence[bool]) -> np.ndarray:
    """Return the default reference point documented on ``hypervolume``."""
    worst, best = finite_points.max(axis=0), finite_points.min(axis=0)
    observed_range = worst - best
    scale = np.where(observed_range > 0, observed_range, UNIT_SCORE_RANGE)
    return np.where(maximise, DEFAULT_MAX_REFERENCE, worst + REFERENCE_MARGIN_FRACTION * scale)


def _normalise_columns_to_unit(values: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1] by its min and max; a constant column becomes all ones."""
    low = values.min(axis=0)
    span = values.max(axis=0) - low
    constant = span == 0
    normalised = (values - low) / np.where(constant, 1.0, span)
    normalised[:, constant] = 1.0
    return normalised
