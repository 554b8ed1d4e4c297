"""What a person watching `igmu sweep` sees beside Tune's table: how many trials are running, finished,
stopped early or errored, and the best final score so far on the sweep's first objective.

A Tune callback in the driver, like the MLflow tracker, that only updates the installed progress
reporter (which shows nothing unless the CLI installed a display).
"""

from __future__ import annotations

import math

from ray.tune import Callback

from igmu import progress
from igmu.sweep.trainable import FINAL


class SweepProgress(Callback):
    """One progress line for the sweep: trials done out of those it will run, and their states."""

    def __init__(self, name: str, objective: str, mode: str, total: int | None):
        self.name, self.objective, self.mode, self.total = name, objective, mode, total
        self.running: set[str] = set()
        self.finished: set[str] = set()
        self.stopped: set[str] = set()
        self.errored: set[str] = set()
        self.best: tuple[float, str] | None = None
        self._attach()

    def _attach(self) -> None:
        # Taken now, in the thread that installed it; the line starts with the first trial, so a
        # sweep that fails before any runs shows none.
        self.reporter = progress.current()
        self.task = None

    # Tune pickles its run configuration (callbacks included) to resume a sweep; a display is not
    # picklable, and a resumed sweep reports to whatever display is installed then.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("reporter", "task")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._attach()

    # --- Tune callback hooks -------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(FINAL):
            self._consider(result.get(self.objective), trial.trial_id)
            self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        done = bool((trial.last_result or {}).get(FINAL))
        (self.finished if done else self.stopped).add(trial.trial_id)
        self._show()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.errored.add(trial.trial_id)
        self._show()

    def on_experiment_end(self, trials, **info):
        if self.task is not None:
            self.reporter.finish(self.task)

    # --- helpers ---------------------------------------------------------------------------
    def _consider(self, value, trial_id: str) -> None:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (float(value), trial_id)

    def summary(self) -> str:
        text = (f"{len(self.running)} running, {len(self.finished)} finished, {len(self.stopped)} stopped early, "
                f"{len(self.errored)} errored")
        if self.best is not None:
            text += f"; best {self.objective} {self.best[0]:.3f} ({self.best[1]})"
        return text

    def _show(self) -> None:
        if self.task is None:
            self.task = self.reporter.start(f"sweep {self.name}", self.total)
        self.task.update(completed=len(self.finished) + len(self.stopped) + len(self.errored), info=self.summary())
