"""Early stopping: Ray's ASHA on one scalar, or MO-ASHA on the objective vector; one per algorithm.

ASHA stops a trial whose score at a rung falls below the best 1/reduction_factor of the scores other
trials had at that rung. That assumes early scores predict final ones, which holds within one
algorithm but not across them: UCE's single closed-form step reports a finished model at the first
rung, where fine-tuning methods are 25 of 150 steps in. In one 40-trial sweep over all five
algorithms, every SalUn and EraseDiff trial was stopped that way (docs/benchmarks.md). A sweep over
several algorithms therefore gets one scheduler per algorithm, each with that algorithm's own `max_t`
(`PerAlgorithm`); MO-ASHA ranks early scores too, so it is split the same way.

MO-ASHA (`MOASHA`) is ASHA with the scalar cut replaced by non-dominated sorting on the sweep's
objectives (Schmucker et al. 2021, "Multi-objective asynchronous successive halving"; Syne Tune's
MOASHA), so that a Pareto search does not lose its trade-offs to one scalar's ranking.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import moocore
import numpy as np
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from igmu.sweep.space import ALGORITHM_KEY

TIME_ATTR = "training_iteration"  # a trial's reports so far: one per interim evaluation


def asha(metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: int) -> ASHAScheduler:
    """Ray's ASHA over interim evaluations (`training_iteration` counts a trial's reports)."""
    return ASHAScheduler(time_attr=TIME_ATTR, metric=metric, mode=mode, max_t=max_t,
                         grace_period=min(grace_period, max_t), reduction_factor=reduction_factor)


# --- MO-ASHA ------------------------------------------------------------------------------------

def milestones(max_t: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The rungs: grace_period * reduction_factor**k below max_t, as Ray's ASHA places them (a report
    at max_t ends the trial anyway, so no decision is made there)."""
    rungs, milestone = [], min(grace_period, max_t)
    while milestone < max_t:
        rungs.append(milestone)
        milestone *= reduction_factor
    return rungs


def pareto_levels(points: np.ndarray, maximise: Sequence[bool]) -> np.ndarray:
    """Non-dominated sorting: 0 for the rows no other row dominates, 1 for those only level 0
    dominates, and so on. A row with a NaN is never compared: it ranks after every complete row."""
    complete = np.isfinite(points).all(axis=1)
    levels = np.full(len(points), len(points), dtype=int)  # beyond any level a complete row can get
    if complete.any():
        levels[complete] = moocore.pareto_rank(points[complete], maximise=list(maximise))
    return levels


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of mutually non-dominated points (moocore has none, hence this):
    per objective, the gap between a point's two neighbours over the objective's range, summed; the
    two ends of each objective get infinity, so the extremes of a trade-off are kept first.

    Computed on distinct points, and an objective all points share is skipped: copies of a point get
    one distance and the order trials arrived in never breaks a tie."""
    distinct, copies = np.unique(points, axis=0, return_inverse=True)
    distance = np.zeros(len(distinct))
    for column in distinct.T:
        order = np.argsort(column, kind="stable")
        span = column[order[-1]] - column[order[0]]
        if span == 0:
            continue
        distance[order[[0, -1]]] = np.inf
        distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / span
    return distance[np.asarray(copies).reshape(-1)]


def continues_at_rung(points: np.ndarray, candidate: int, maximise: Sequence[bool], reduction_factor: int) -> bool:
    """Whether the trial in row `candidate` of the vectors recorded at a rung (its own included)
    goes on to the next rung. The rule is `MOASHA`'s docstring."""
    used = np.isfinite(points).any(axis=0)
    if not used.any():
        return True  # nothing measured: no ground to stop anyone
    points = points[:, used]
    levels = pareto_levels(points, [way for way, kept in zip(maximise, used) if kept])
    if levels[candidate] == 0:
        return True
    crowding = np.zeros(len(points))
    for level in np.unique(levels[np.isfinite(points).all(axis=1)]):
        members = levels == level
        crowding[members] = crowding_distance(points[members])
    # Lower level first, then the wider gap; equal keys tie, and a tie does not push the candidate out.
    ahead = np.sum((levels < levels[candidate]) |
                   ((levels == levels[candidate]) & (crowding > crowding[candidate])))
    return ahead < math.ceil(len(points) / reduction_factor)


def objective_vector(result: Mapping, objectives: Sequence[str]) -> tuple[float, ...]:
    """The result's objectives in order; NaN for one the report lacks or that is not a number."""
    return tuple(_number(result.get(name)) for name in objectives)


def _number(value) -> float:
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan


class MOASHA(FIFOScheduler):
    """Asynchronous successive halving on the objective vector.

    Rungs are those of Ray's ASHA with time_attr `training_iteration`: grace_period *
    reduction_factor**k below max_t. When a trial's report reaches a rung it has no vector at yet, its
    objective vector is recorded there and the trial is judged, as in ASHA, only against the vectors
    recorded at that rung so far (its own included, n in all):

    - the objectives used are those finite in at least one recorded vector (an interim evaluation may
      leave an aspect unmeasured, as NaN); if none is, the trial continues;
    - the vectors are sorted into non-dominated levels (`moocore.pareto_rank`, with the sweep's
      directions); a vector with NaN in a used objective is never compared and ranks after every
      complete one;
    - the trial continues if it is on the first level: non-dominated at that rung, which keeps every
      trade-off alive;
    - otherwise it continues if fewer than ceil(n / reduction_factor) vectors rank ahead of it: on a
      lower level, or on its level with a larger crowding distance (NSGA-II). Equal keys tie, so a
      trial alone at a rung, or tied at the cut, continues. Otherwise it is stopped.

    A report at max_t or beyond is answered STOP, as ASHA does. Holds plain data only (objective
    names, directions, rungs as dicts of tuples), so `Tuner.restore` can unpickle it.
    """

    def __init__(self, objectives: Mapping[str, str], max_t: int, grace_period: int, reduction_factor: int):
        super().__init__()
        self.objectives = list(objectives)
        self.maximise = [direction == "max" for direction in objectives.values()]
        self.max_t = max_t
        self.reduction_factor = reduction_factor
        self.rungs: dict[int, dict[str, tuple[float, ...]]] = {
            milestone: {} for milestone in milestones(max_t, grace_period, reduction_factor)}
        self.stopped_at: dict[str, int] = {}  # trial id -> the rung that stopped it
        self.num_stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # It ranks on its own objectives: refuse a metric handed to TuneConfig, accept none.
        return not (metric or mode)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if TIME_ATTR not in result or not any(name in result for name in self.objectives):
            return TrialScheduler.CONTINUE  # not an evaluation (ASHA skips such results too)
        if result[TIME_ATTR] >= self.max_t:
            self.num_stopped += 1
            return TrialScheduler.STOP
        milestone = self.rung_reached(trial.trial_id, result[TIME_ATTR])
        if milestone is None:
            return TrialScheduler.CONTINUE
        recorded = self.rungs[milestone]
        recorded[trial.trial_id] = objective_vector(result, self.objectives)
        points = np.array(list(recorded.values()), dtype=float)
        if continues_at_rung(points, list(recorded).index(trial.trial_id), self.maximise, self.reduction_factor):
            return TrialScheduler.CONTINUE
        self.stopped_at[trial.trial_id] = milestone
        self.num_stopped += 1
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        # As ASHA does: a rung the last result reached but no decision recorded still informs later trials.
        if result and TIME_ATTR in result and any(name in result for name in self.objectives):
            milestone = self.rung_reached(trial.trial_id, result[TIME_ATTR])
            if milestone is not None:
                self.rungs[milestone][trial.trial_id] = objective_vector(result, self.objectives)

    def rung_reached(self, trial_id: str, iteration: int) -> int | None:
        """The highest rung at or below `iteration`, unless the trial already has a vector there."""
        reached = [milestone for milestone in self.rungs if milestone <= iteration]
        if not reached or trial_id in self.rungs[max(reached)]:
            return None
        return max(reached)

    def debug_string(self) -> str:
        rungs = " | ".join(f"Iter {milestone}: {len(recorded)} recorded" for milestone, recorded in self.rungs.items())
        return f"Using MO-ASHA on {', '.join(self.objectives)}: num_stopped={self.num_stopped}\nRungs: {rungs}"


# --- one scheduler per algorithm ------------------------------------------------------------------

class PerAlgorithm(FIFOScheduler):
    """One scheduler per algorithm, made by `new_scheduler` when the algorithm's first trial arrives,
    with that algorithm's `max_t`. Trials start in submission order, as under ASHA itself. Holds plain
    data only (subclasses keep their settings as attributes), so `Tuner.restore` can unpickle it."""

    label = "a scheduler"

    def __init__(self, max_t_by_algorithm: dict[str, int]):
        super().__init__()
        self.max_t_by_algorithm = dict(max_t_by_algorithm)
        self.by_algorithm: dict[str, TrialScheduler] = {}
        self.stopped: dict[str, int] = {}

    def new_scheduler(self, max_t: int) -> TrialScheduler:
        raise NotImplementedError(f"{type(self).__name__} must say which scheduler each algorithm gets")

    def scheduler_for(self, algorithm: str) -> TrialScheduler:
        if algorithm not in self.by_algorithm:
            self.by_algorithm[algorithm] = self.new_scheduler(self.max_t_by_algorithm[algorithm])
        return self.by_algorithm[algorithm]

    def _of(self, trial) -> TrialScheduler:
        return self.scheduler_for(trial.config[ALGORITHM_KEY])

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # Like ASHA built with its own metric: refuse a second one, accept none.
        return not (metric or mode)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = self._of(trial).on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            algorithm = trial.config[ALGORITHM_KEY]
            self.stopped[algorithm] = self.stopped.get(algorithm, 0) + 1
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"Using {self.label} per algorithm: num_stopped={dict(sorted(self.stopped.items()))}"


class PerAlgorithmASHA(PerAlgorithm):
    """One Ray `ASHAScheduler` per algorithm, on one scalar."""

    label = "AsyncHyperBand"

    def __init__(self, metric: str, mode: str, max_t_by_algorithm: dict[str, int], grace_period: int,
                 reduction_factor: int):
        super().__init__(max_t_by_algorithm)
        self._metric, self._mode = metric, mode
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor

    def new_scheduler(self, max_t: int) -> ASHAScheduler:
        return asha(self._metric, self._mode, max_t, self.grace_period, self.reduction_factor)


class PerAlgorithmMOASHA(PerAlgorithm):
    """One `MOASHA` per algorithm, on the sweep's objectives."""

    label = "MO-ASHA"

    def __init__(self, objectives: Mapping[str, str], max_t_by_algorithm: dict[str, int], grace_period: int,
                 reduction_factor: int):
        super().__init__(max_t_by_algorithm)
        self.objectives = dict(objectives)
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor

    def new_scheduler(self, max_t: int) -> MOASHA:
        return MOASHA(self.objectives, max_t, self.grace_period, self.reduction_factor)


def mo_asha(objectives: Mapping[str, str], max_t_by_algorithm: dict[str, int], grace_period: int,
            reduction_factor: int) -> MOASHA | PerAlgorithmMOASHA:
    """MO-ASHA for a sweep: one per algorithm when it has several."""
    if len(max_t_by_algorithm) > 1:
        return PerAlgorithmMOASHA(objectives, max_t_by_algorithm, grace_period, reduction_factor)
    return MOASHA(objectives, max(max_t_by_algorithm.values()), grace_period, reduction_factor)
