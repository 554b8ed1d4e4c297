"""Pareto fronts, ranks, hypervolume and knee point against brute force and optuna."""

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume

from igmu.analysis.pareto import (
    hypervolume,
    knee_point,
    non_dominated,
    non_dominated_sort,
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


def _brute_force_ranks(points, directions):
    ranks = np.full(len(points), -1)
    remaining = np.flatnonzero(np.all(np.isfinite(points), axis=1))
    rank = 0
    while remaining.size:
        on_front = _brute_force_front(points[remaining], directions)
        ranks[remaining[on_front]] = rank
        remaining = remaining[~on_front]
        rank += 1
    return ranks


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


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", SEEDS)
def test_front_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    points = _messy_points(rng, int(rng.integers(1, 120)), k)
    directions = _random_directions(rng, k)
    expected = _brute_force_front(points, directions)
    np.testing.assert_array_equal(non_dominated(points, directions), expected)


def test_front_matches_brute_force_across_several_blocks():
    # More rows than one comparison block, so front rows from earlier blocks must be used.
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


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", range(15))
def test_non_dominated_sort_matches_brute_force(seed, k):
    rng = np.random.default_rng(1000 + seed)
    points = _messy_points(rng, int(rng.integers(1, 60)), k)
    directions = _random_directions(rng, k)
    np.testing.assert_array_equal(
        non_dominated_sort(points, directions), _brute_force_ranks(points, directions)
    )


def test_non_dominated_sort_hand_example():
    points = np.array([[3.0, 3.0], [2.0, 2.0], [1.0, 1.0], [np.nan, 0.0], [3.0, 1.0]])
    np.testing.assert_array_equal(non_dominated_sort(points, ["max", "max"]), [0, 1, 2, -1, 1])


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


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_matches_optuna(seed, k):
    rng = np.random.default_rng(2000 + seed)
    points = np.round(rng.random((int(rng.integers(1, 200)), k)), int(rng.integers(1, 4)))
    directions = _random_directions(rng, k)
    reference = np.array([0.0 if d == "max" else 1.05 for d in directions])

    loss = _to_loss(points, directions)
    loss_reference = _to_loss(reference, directions)
    expected = compute_hypervolume(loss, loss_reference)

    assert expected > 0
    assert hypervolume(points, directions, reference) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_hypervolume_ignores_points_outside_reference_and_nan_rows(seed):
    rng = np.random.default_rng(3000 + seed)
    points = rng.random((150, 3)) * 2 - 0.5
    points[rng.integers(0, 150, size=10), 1] = np.nan
    directions = ["max", "min", "max"]
    reference = np.array([0.2, 0.9, 0.1])

    loss = _to_loss(points, directions)
    loss_reference = _to_loss(reference, directions)
    inside = np.all(loss < loss_reference, axis=1)  # NaN compares False, so NaN rows drop out
    expected = compute_hypervolume(loss[inside], loss_reference)

    assert hypervolume(points, directions, reference) == pytest.approx(expected, rel=1e-12)


def test_default_reference_is_zero_for_max_and_margin_beyond_worst_for_min():
    points = np.array([[0.5, 0.2], [0.25, 0.6]])
    # "min" reference: worst 0.6 + 0.1 * (0.6 - 0.2) = 0.64.
    expected = compute_hypervolume(
        _to_loss(points, ["max", "min"]), np.array([-0.0, 0.64])
    )
    assert hypervolume(points, ["max", "min"]) == pytest.approx(expected)


def test_default_reference_for_constant_min_objective_uses_unit_scale_margin():
    points = np.array([[0.5, 0.3], [0.25, 0.3]])
    # Range 0, so the margin is 10% of the [0, 1] scale: reference 0.3 + 0.1 = 0.4.
    assert hypervolume(points, ["max", "min"]) == pytest.approx(0.5 * 0.1)


def test_hypervolume_of_no_finite_points_is_zero():
    assert hypervolume(np.full((2, 2), np.nan), ["max", "min"]) == 0.0


def test_hypervolume_rejects_more_than_three_objectives():
    with pytest.raises(ValueError, match="2-3 objectives"):
        hypervolume(np.ones((3, 4)), ["max"] * 4)


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


@pytest.mark.parametrize("function", [non_dominated, non_dominated_sort, hypervolume, knee_point])
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
