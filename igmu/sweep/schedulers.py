"""Early stopping that ranks a trial only against trials of its own algorithm.

ASHA stops a trial whose score at a rung falls below the best 1/reduction_factor of the scores other
trials had at that rung. That assumes early scores predict final ones, which holds within one
algorithm but not across them: UCE's single closed-form step reports a finished model at the first
rung, where fine-tuning methods are 25 of 150 steps in. In one 40-trial sweep over all five
algorithms, every SalUn and EraseDiff trial was stopped that way (docs/benchmarks.md). A sweep over
several algorithms therefore gets one ASHA per algorithm, each with that algorithm's own `max_t`.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from igmu.sweep.space import ALGORITHM_KEY


def asha(metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: int) -> ASHAScheduler:
    """Ray's ASHA over interim evaluations (`training_iteration` counts a trial's reports)."""
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                         grace_period=min(grace_period, max_t), reduction_factor=reduction_factor)


class PerAlgorithmASHA(FIFOScheduler):
    """One `ASHAScheduler` per algorithm, made when its first trial arrives. Trials start in
    submission order, as under ASHA itself. Holds plain data only, so `Tuner.restore` can unpickle it."""

    def __init__(self, metric: str, mode: str, max_t_by_algorithm: dict[str, int], grace_period: int,
                 reduction_factor: int):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.max_t_by_algorithm = dict(max_t_by_algorithm)
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.by_algorithm: dict[str, ASHAScheduler] = {}
        self.stopped: dict[str, int] = {}

    def scheduler_for(self, algorithm: str) -> ASHAScheduler:
        if algorithm not in self.by_algorithm:
            self.by_algorithm[algorithm] = asha(self._metric, self._mode, self.max_t_by_algorithm[algorithm],
                                                self.grace_period, self.reduction_factor)
        return self.by_algorithm[algorithm]

    def _of(self, trial) -> ASHAScheduler:
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
        return f"Using AsyncHyperBand per algorithm: num_stopped={dict(sorted(self.stopped.items()))}"

