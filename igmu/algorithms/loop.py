"""The one loop that drives every `Unlearner`: prepare, step, report, resume."""

from __future__ import annotations

import math
from typing import Callable

import torch

from igmu import progress
from igmu.algorithms.base import Unlearner

StepCallback = Callable[[int, dict], None]


def run_unlearning(unlearner: Unlearner, on_step: StepCallback | None = None, prepared: bool = False) -> list[dict]:
    """Run from `unlearner.step_index` to `total_steps`; returns the per-step losses.

    `on_step(step, losses)` is called after each step (interim evaluation, checkpoints). A resumed
    unlearner (after `load_state_dict`) continues where it stopped; `prepared=True` skips `prepare()`
    when it already ran (or was restored). Steps and losses go to the installed progress reporter.
    """
    if not prepared:
        unlearner.prepare()
    history = []
    with progress.task(f"{unlearner.name} steps", total=unlearner.total_steps) as shown:
        shown.update(completed=unlearner.step_index)  # a resumed run starts part way
        while unlearner.step_index < unlearner.total_steps:
            losses = unlearner.step()
            unlearner.step_index += 1
            _check_finite(unlearner, losses)
            history.append(losses)
            if on_step is not None:
                on_step(unlearner.step_index, losses)
            shown.advance(info=progress.losses_text(losses))
    return history


def _check_finite(unlearner: Unlearner, losses: dict) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        # Measured on an H100 (docs/benchmarks.md): ESD's and SalUn's first steps on an SD 1.4-shape
        # model are NaN with fp16 weights and finite with bf16, whose range is fp32's.
        hint = (" or use --precision bf16 (fp16's narrow range overflows in training)"
                if getattr(unlearner.generator, "dtype", None) == torch.float16 else "")
        raise FloatingPointError(f"{unlearner.name} step {unlearner.step_index}: non-finite loss {bad}; "
                                 f"lower the learning rate{hint}")

