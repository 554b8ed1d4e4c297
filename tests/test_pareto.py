"""Pareto fronts, hypervolume and knee point against brute force."""

import math

import numpy as np
import pytest

from igmu.analysis.pareto import (
    hypervolume,
    knee_point,
    non_dominated,
)

SEEDS = range(40)
DIRECTION_CHOICES = ("max", "min")


def _brute_force_front(points, directions):
    """O(n^2) reference: a finite row is on the front iff no other finite row dominates it."""
    signs = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    minimised = points * signs
    finite = np.all(np.isfinite(minimised), axis=1)
    mask = np.zeros(len(points), dtype=bool)
    for i in np.flatnonzero(finite):
        dominated = False
        for j in np.flatnonzero(finite):
            no_worse = np.all(minimised[j] <= minimised[i])
            better = np.any(minimised[j] < minimised[i])
            if no_worse and better:
                dominated = True
                break
        mask[i] = not dominated
    return mask


def _brute_force_hypervolume(points, directions, reference):
    """Grid reference: cut the box below the reference at every point coordinate, add up covered cells.

    A cell is covered when some point is no worse than the cell's best corner in every objective.
    Cost grows like (points + 1) ** objectives, so it is only for small sets.
    """
    loss = _to_loss(np.asarray(points, dtype=float), directions)
    loss_reference = _to_loss(np.asarray(reference, dtype=float), directions)
    loss = loss[np.all(np.isfinite(loss), axis=1)]
    inside = loss[np.all(loss < loss_reference, axis=1)]
    if inside.shape[0] == 0:
        return 0.0
    edges = [np.unique(np.append(inside[:, j], loss_reference[j])) for j in range(loss.shape[1])]
    lows = np.stack([g.ravel() for g in np.meshgrid(*[e[:-1] for e in edges], indexing="ij")], axis=1)
    widths = np.stack([g.ravel() for g in np.meshgrid(*[np.diff(e) for e in edges], indexing="ij")], axis=1)
    covered = np.any(np.all(inside[None, :, :] <= lows[:, None, :], axis=2), axis=1)
    return math.fsum(np.prod(widths[covered], axis=1))


def _messy_points(rng, n, k):
    """Random points with ties (rounding), exact duplicate rows, NaN and inf entries."""
    decimals = int(rng.integers(1, 3))
    points = np.round(rng.random((n, k)), decimals)
    duplicate_rows = rng.integers(0, n, size=n // 5)
    points[rng.integers(0, n, size=n // 5)] = points[duplicate_rows]
    points[rng.integers(0, n, size=max(1, n // 20)), rng.integers(0, k)] = np.nan
    points[rng.integers(0, n), rng.integers(0, k)] = np.inf
    return points


def _random_directions(rng, k):
    return [str(d) for d in rng.choice(DIRECTION_CHOICES, size=k)]


def _to_loss(points, directions):
    return points * np.array([-1.0 if d == "max" else 1.0 for d in directions])


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_front_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    points = _messy_points(rng, int(rng.integers(1, 120)), k)
    directions = _random_directions(rng, k)
    expected = _brute_force_front(points, directions)
    np.testing.assert_array_equal(non_dominated(points, directions), expected)


def test_front_of_a_large_messy_set_matches_brute_force():
    rng = np.random.default_rng(7)
    points = _messy_points(rng, 700, 3)
    directions = ["max", "min", "max"]
    expected = _brute_force_front(points, directions)
    np.testing.assert_array_equal(non_dominated(points, directions), expected)


def test_exact_duplicates_of_a_front_point_are_all_on_the_front():
    points = np.array([[1.0, 1.0], [1.0, 1.0], [0.5, 0.5], [1.0, 1.0], [0.0, 2.0]])
    mask = non_dominated(points, ["max", "max"])
    np.testing.assert_array_equal(mask, [True, True, False, True, True])


def test_nan_rows_are_never_on_the_front_and_dominate_nothing():
    points = np.array([[np.nan, 10.0], [0.5, 0.5], [1.0, np.inf]])
    np.testing.assert_array_equal(non_dominated(points, ["max", "max"]), [False, True, False])


def test_all_nan_and_empty_inputs_give_empty_fronts():
    assert not non_dominated(np.full((3, 2), np.nan), ["max", "min"]).any()
    assert non_dominated(np.empty((0, 3)), ["max", "min", "max"]).shape == (0,)


def test_every_point_of_a_plane_is_on_the_front():
    # Every point on the plane x + y + z = 1 is non-dominated: the worst case for front size.
    rng = np.random.default_rng(3)
    xy = rng.random((2000, 2)) / 2
    points = np.column_stack([xy, 1.0 - xy.sum(axis=1)])
    assert non_dominated(points, ["min", "min", "min"]).all()
    assert non_dominated(points, ["max", "max", "max"]).all()


def test_hypervolume_hand_computed_staircase():
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(points, ["max", "max"], reference=[0.0, 0.0]) == pytest.approx(6.0)
    # The same points minimised against (4, 4): 3*1 + 2*1 + 1*1.
    assert hypervolume(points, ["min", "min"], reference=[4.0, 4.0]) == pytest.approx(6.0)


def test_hypervolume_hand_computed_3d():
    # Two unit boxes from (0,0,0) and (1,1,1) to (2,2,2) overlap in one unit cube: 8 + 1 - 1.
    points = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert hypervolume(points, ["min"] * 3, reference=[2.0, 2.0, 2.0]) == pytest.approx(
        2 * 2 * 1 + 1 * 1 * 2 - 1 * 1 * 1
    )


def test_hypervolume_hand_computed_4d():
    # Boxes of 2*2*2*1 and 1*1*1*2 up to (2, 2, 2, 2), overlapping in one unit hypercube.
    points = np.array([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    assert hypervolume(points, ["min"] * 4, reference=[2.0] * 4) == pytest.approx(8 + 2 - 1)


def test_brute_force_hypervolume_agrees_with_the_hand_computed_cases():
    # The reference used below must itself be right on cases worked out by hand.
    staircase = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert _brute_force_hypervolume(staircase, ["max", "max"], [0.0, 0.0]) == pytest.approx(6.0)
    boxes = np.array([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    assert _brute_force_hypervolume(boxes, ["min"] * 4, [2.0] * 4) == pytest.approx(9.0)


# Point counts stay small in higher dimensions: the brute force grows like n ** k.
BRUTE_FORCE_MAX_POINTS = {2: 60, 3: 30, 4: 12, 5: 7}


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_matches_brute_force(seed, k):
    rng = np.random.default_rng(2000 + seed)
    points = _messy_points(rng, int(rng.integers(1, BRUTE_FORCE_MAX_POINTS[k] + 1)), k)
    directions = _random_directions(rng, k)
    reference = np.array([0.0 if d == "max" else 1.05 for d in directions])

    expected = _brute_force_hypervolume(points, directions, reference)
    assert hypervolume(points, directions, reference) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", range(10))
def test_hypervolume_ignores_points_outside_reference_and_nan_rows(seed, k):
    rng = np.random.default_rng(3000 + seed)
    n = BRUTE_FORCE_MAX_POINTS[k]
    points = rng.random((n, k)) * 2 - 0.5
    points[rng.integers(0, n, size=n // 10 + 1), 1] = np.nan
    directions = ["max", "min", "max", "min"][:k]
    reference = np.array([0.2, 0.9, 0.1, 0.8][:k])

    expected = _brute_force_hypervolume(points, directions, reference)
    assert hypervolume(points, directions, reference) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_default_reference_is_zero_for_max_and_margin_beyond_worst_for_min():
    points = np.array([[0.5, 0.2], [0.25, 0.6]])
    # "min" reference: worst 0.6 + 0.1 * (0.6 - 0.2) = 0.64; the second point is dominated.
    assert hypervolume(points, ["max", "min"]) == pytest.approx(0.5 * (0.64 - 0.2))
    expected = _brute_force_hypervolume(points, ["max", "min"], [0.0, 0.64])
    assert hypervolume(points, ["max", "min"]) == pytest.approx(expected, rel=1e-12)


def test_default_reference_for_constant_min_objective_uses_unit_scale_margin():
    points = np.array([[0.5, 0.3], [0.25, 0.3]])
    # Range 0, so the margin is 10% of the [0, 1] scale: reference 0.3 + 0.1 = 0.4.
    assert hypervolume(points, ["max", "min"]) == pytest.approx(0.5 * 0.1)


def test_hypervolume_of_no_finite_points_is_zero():
    assert hypervolume(np.full((2, 2), np.nan), ["max", "min"]) == 0.0


def test_single_objective_hypervolume_is_the_best_interval():
    points = np.array([[0.3], [0.7], [np.nan]])
    assert hypervolume(points, ["max"]) == pytest.approx(0.7)
    assert hypervolume(points, ["min"], reference=[1.0]) == pytest.approx(0.7)


@pytest.mark.parametrize("k, n", [(4, 400), (5, 300)])
def test_four_and_five_objectives_give_a_front_and_a_finite_hypervolume(k, n):
    rng = np.random.default_rng(k)
    points = _messy_points(rng, n, k)
    directions = _random_directions(rng, k)
    mask = non_dominated(points, directions)
    np.testing.assert_array_equal(mask, _brute_force_front(points, directions))
    assert math.isfinite(hypervolume(points, directions)) and hypervolume(points, directions) > 0
    # Only front points enclose volume, so with a fixed reference the front alone gives the same value.
    reference = [0.0 if d == "max" else 1.05 for d in directions]
    volume = hypervolume(points, directions, reference)
    assert 0 < volume < 1.05 ** k
    assert hypervolume(points[mask], directions, reference) == pytest.approx(volume, rel=1e-12)
    assert knee_point(points, directions) in np.flatnonzero(mask)


def test_knee_point_picks_the_balanced_point():
    points = np.array(
        [
            [1.0, 0.0],  # extreme in the first objective
            [0.0, 1.0],  # extreme in the second objective
            [0.6, 0.6],  # balanced
            [0.3, 0.3],  # dominated by the balanced point
            [np.nan, 2.0],
        ]
    )
    assert knee_point(points, ["max", "max"]) == 2


def test_knee_point_orients_min_objectives_and_breaks_ties_by_sum_then_index():
    # Loss objective second: 0.2 is the best loss. Rows 1 and 2 are exact duplicates.
    points = np.array([[0.0, 0.2], [0.8, 0.6], [0.8, 0.6], [1.0, 1.0]])
    # Normalised (higher is better): row0 (0, 1), rows 1-2 (0.8, 0.5), row3 (1, 0).
    assert knee_point(points, ["max", "min"]) == 1


def test_knee_point_ties_on_minimum_go_to_larger_sum():
    # Rows 1 and 2 both have a worst normalised objective of 0.5; row 2 has the larger sum.
    points = np.array([[0.0, 1.0], [0.5, 0.7], [0.9, 0.5], [1.0, 0.0]])
    assert knee_point(points, ["max", "max"]) == 2


def test_knee_point_of_nan_only_input_is_none():
    assert knee_point(np.full((3, 2), np.nan), ["max", "max"]) is None


@pytest.mark.parametrize("function", [non_dominated, hypervolume, knee_point])
def test_bad_direction_is_named_in_the_error(function):
    with pytest.raises(ValueError, match=r"'maximize'.*'max'.*'min'"):
        function(np.ones((2, 2)), ["max", "maximize"])


def test_direction_count_must_match_columns():
    with pytest.raises(ValueError, match="2 direction"):
        non_dominated(np.ones((2, 3)), ["max", "min"])


def test_single_string_direction_is_rejected():
    with pytest.raises(ValueError, match="single string"):
        non_dominated(np.ones((2, 3)), "max")


def test_points_must_be_two_dimensional():
    with pytest.raises(ValueError, match="2-D"):
        non_dominated(np.ones(3), ["max"])


def test_reference_must_match_objectives():
    with pytest.raises(ValueError, match="reference"):
        hypervolume(np.ones((2, 2)), ["max", "max"], reference=[0.0])
