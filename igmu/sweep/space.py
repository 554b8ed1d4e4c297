"""The one place where a validated sweep file becomes Ray Tune's `param_space`.

`to_tune_space` maps each distribution of `igmu.sweep.file` onto its Tune domain and passes
fixed values through unchanged:

    uniform [lo, hi]      -> tune.uniform(lo, hi)
    loguniform [lo, hi]   -> tune.loguniform(lo, hi)
    int [lo, hi]          -> tune.randint(lo, hi + 1)   (the file is inclusive, randint excludes hi)
    choice [a, b, ...]    -> tune.choice([a, b, ...])
    grid [a, b, ...]      -> tune.grid_search([a, b, ...])

Shape of the space. One algorithm gives ``{"algorithm": "salun", "params": {...}}``. A list of
algorithms gives ``{"algorithm": tune.choice([...]), "params_by_algorithm": {"esd": {...}, ...}}``:
each algorithm keeps its own sub-space because the algorithms' hyperparameters differ in name,
type and range, and a flat ``params`` dict would let them collide. The trainable never looks at
that shape; it calls ``trial_params(config)`` and gets ``(algorithm, flat params dict)`` either way.
The algorithm itself is a `grid_search` when ``search.sampler`` is ``grid`` (every algorithm runs),
otherwise a `choice` the sampler learns.

The cost of the nested shape: Tune and Optuna sample every algorithm's sub-space in every trial
and the trial ignores all but the chosen one. Optuna's TPE then sees parameters that did not
matter for that trial, which makes it learn more slowly than a conditional (define-by-run) space
would; it stays correct, and keeps the space plain data that Tune can print, store and restore.

Objectives and early stopping: ASHA and HyperBand compare one scalar per trial, so they prune on
``early_stop.metric`` (by default ``forget_retain_hmean``, the harmonic mean of forgetting and
preservation from the interim small-budget evaluation), while Optuna receives the whole
objective vector of the final scorecard (``optuna_objectives``).
"""

from __future__ import annotations

from typing import Any

from ray import tune

from igmu.sweep.file import GRID_SAMPLER, Distribution, SweepConfig

ALGORITHM_KEY = "algorithm"
PARAMS_KEY = "params"
PARAMS_BY_ALGORITHM_KEY = "params_by_algorithm"
# Every scheduler metric (an aspect score or the forgetting/preservation harmonic mean) lies in
# [0, 1] with higher meaning better.
SCHEDULER_MODE = "max"


def _domain(value: Any):
    """One hyperparameter as Tune sees it: a domain for a Distribution, the value itself otherwise."""
    if not isinstance(value, Distribution):
        return value
    if value.kind == "uniform":
        return tune.uniform(*value.args)
    if value.kind == "loguniform":
        return tune.loguniform(*value.args)
    if value.kind == "int":
        low, high = value.args
        return tune.randint(low, high + 1)
    if value.kind == "choice":
        return tune.choice(list(value.args))
    if value.kind == "grid":
        return tune.grid_search(list(value.args))
    raise ValueError(f"unknown distribution kind {value.kind!r}")


def to_tune_space(config: SweepConfig) -> dict:
    """The sweep's `param_space` for `tune.Tuner` (shape explained in the module docstring)."""
    spaces = {name: {key: _domain(value) for key, value in space.params.items()}
              for name, space in config.algorithms.items()}
    names = list(spaces)
    if len(names) == 1:
        return {ALGORITHM_KEY: names[0], PARAMS_KEY: spaces[names[0]]}
    chooser = tune.grid_search(names) if config.search.sampler == GRID_SAMPLER else tune.choice(names)
    return {ALGORITHM_KEY: chooser, PARAMS_BY_ALGORITHM_KEY: spaces}


def trial_params(config: dict) -> tuple[str, dict]:
    """(algorithm, its hyperparameter overrides) from a resolved trial config of either shape.

    An algorithm without a sub-space may be missing from the resolved config altogether (searchers
    flatten nested dicts and drop empty ones), which means: run it with its defaults."""
    algorithm = config[ALGORITHM_KEY]
    if PARAMS_KEY in config:
        return algorithm, dict(config[PARAMS_KEY])
    return algorithm, dict(config.get(PARAMS_BY_ALGORITHM_KEY, {}).get(algorithm, {}))


def scheduler_metric(config: SweepConfig) -> tuple[str, str]:
    """(metric, mode) for ASHA / HyperBand: one scalar, because Ray's schedulers cannot rank vectors
    (MO-ASHA, `igmu.sweep.schedulers.MOASHA`, ranks the objectives instead and ignores it)."""
    return config.early_stop.metric, SCHEDULER_MODE


def optuna_objectives(config: SweepConfig) -> tuple[list[str], list[str]]:
    """(metrics, modes) for `OptunaSearch(metric=..., mode=...)`, in the file's order. Lists even for
    one objective; with a list, leave metric/mode out of `TuneConfig` (OptunaSearch owns them)."""
    return list(config.objectives), list(config.objectives.values())
