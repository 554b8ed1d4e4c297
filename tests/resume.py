"""The resume check every algorithm family shares: stop after two steps, save, resume, compare."""

from __future__ import annotations

from typing import Callable

import torch

from igmu.algorithms.base import Unlearner
from igmu.algorithms.loop import run_unlearning


def assert_resumes_bit_for_bit(fresh: Callable[[], Unlearner],
                               weights: Callable[[Unlearner], dict[str, torch.Tensor]]) -> None:
    """`fresh()` builds a prepared unlearner; a run resumed from its state after two steps must end
    with exactly the `weights` of the run that went straight through."""
    straight = fresh()
    for _ in range(min(2, straight.total_steps)):
        straight.step()
        straight.step_index += 1
    state = straight.state_dict()
    run_unlearning(straight, prepared=True)

    resumed = fresh()
    resumed.load_state_dict(state)
    run_unlearning(resumed, prepared=True)
    for (key, a), b in zip(weights(straight).items(), weights(resumed).values()):
        assert torch.equal(a, b), key
    # A method that edits sampling resumes with the same rule (None for every other method).
    assert getattr(straight.generator, "guidance_rule", None) == getattr(resumed.generator, "guidance_rule", None)
