"""Where a trial's time goes: seconds per phase, measured by the trial and sent with every report.

The worker measures what it does (loading, unlearning steps, interim and final evaluation split into
image generation and the rest, checkpoints, saving artifacts). The driver measures how long the trial
held its slot, from Tune's start of the trial to its end; what the worker did not measure in that span
is orchestration: Ray starting the worker, Tune handing reports and checkpoints to the driver, MLflow
logging. `bench/sweep_profile.py` adds these up over a sweep.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

# Report keys are `profile_<phase>_s`, cumulative over the trial (a resumed trial continues its sums).
PREFIX = "profile_"
SUFFIX = "_s"
SETUP = "setup"
STEPS = "steps"
INTERIM_GENERATION = "interim_generation"
INTERIM_JUDGING = "interim_judging"
FINAL_GENERATION = "final_generation"
FINAL_JUDGING = "final_judging"
CHECKPOINT = "checkpoint"
ARTIFACTS = "artifacts"
# Handing a report to Tune: measured by the worker, but it is orchestration (see `orchestration_seconds`).
REPORT = "report"
WORKER_PHASES = (SETUP, STEPS, INTERIM_GENERATION, INTERIM_JUDGING, FINAL_GENERATION, FINAL_JUDGING,
                 CHECKPOINT, ARTIFACTS, REPORT)
WORK_PHASES = tuple(phase for phase in WORKER_PHASES if phase != REPORT)
# Measured by the driver: the trial's span on its slot, and the part of it no worker phase covers.
WALL = "wall"
ORCHESTRATION = "orchestration"
# Measured by the driver on the sweep's parent run: the search (Tune's fit) and the held-out stage.
SEARCH = "search"
HELD_OUT = "held_out"


def key(phase: str) -> str:
    return f"{PREFIX}{phase}{SUFFIX}"


WORK_KEYS = tuple(key(phase) for phase in WORK_PHASES)


class PhaseClock:
    """Cumulative seconds per phase, on a monotonic clock."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = {phase: 0.0 for phase in WORKER_PHASES}
        self.seconds.update(seconds or {})

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def report(self) -> dict[str, float]:
        return {key(phase): round(seconds, 4) for phase, seconds in self.seconds.items()}


def work_seconds(result: dict) -> float:
    """The seconds a report says its worker spent working (every phase but handing reports to Tune)."""
    return sum(float(result.get(name) or 0.0) for name in WORK_KEYS)


def orchestration_seconds(wall: float, result: dict) -> float:
    """The part of a trial's `wall` span spent on anything but the trial's own work: starting the
    worker, reports handed to Tune, stopping it. Never below zero: a resumed trial's sums include
    time spent before this driver started it."""
    return max(0.0, wall - work_seconds(result))
