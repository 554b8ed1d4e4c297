"""The one loop that drives every `Unlearner`: prepare, step, report, resume."""

from __future__ import annotations

import math
import sys
import time
from typing import Callable

from igmu.algorithms.base import Unlearner

StepCallback = Callable[[int, dict], None]


def run_unlearning(unlearner: Unlearner, on_step: StepCallback | None = None, progress: bool = False,
                   prepared: bool = False) -> list[dict]:
    """Run from `unlearner.step_index` to `total_steps`; returns the per-step losses.

    `on_step(step, losses)` is called after each step (interim evaluation, checkpoints). A resumed
    unlearner (after `load_state_dict`) continues where it stopped; `prepared=True` skips `prepare()`
    when it already ran (or was restored).
    """
    if not prepared:
        unlearner.prepare()
    history = []
    started = time.time()
    while unlearner.step_index < unlearner.total_steps:
        losses = unlearner.step()
        unlearner.step_index += 1
        _check_finite(unlearner, losses)
        history.append(losses)
        if on_step is not None:
            on_step(unlearner.step_index, losses)
        if progress:
            _show_progress(unlearner, losses, started)
    if progress and history:
        sys.stderr.write("\n")
    return history


def _check_finite(unlearner: Unlearner, losses: dict) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"{unlearner.name} step {unlearner.step_index}: non-finite loss {bad}; "
                                 "lower the learning rate")


def _show_progress(unlearner: Unlearner, losses: dict, started: float) -> None:
    done, total = unlearner.step_index, unlearner.total_steps
    shown = " ".join(f"{k}={v:.4f}" for k, v in list(losses.items())[:3])
    sys.stderr.write(f"\r{unlearner.name} {done}/{total} {shown} [{time.time() - started:.0f}s]   ")
    sys.stderr.flush()
