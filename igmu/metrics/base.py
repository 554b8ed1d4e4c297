"""The metric registry and the one result shape every metric returns."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable

from igmu.errors import UsageError

ASPECTS = ("forgetting", "preservation", "quality", "alignment", "robustness")
BUDGETS = ("small", "full")


@dataclass
class MetricResult:
    """A score in [0, 1] (higher is better) plus the raw figures it came from, and where the score's
    sampling error can be measured, its 95% interval (igmu.metrics.intervals)."""

    score: float
    raw: dict = field(default_factory=dict)
    interval: tuple[float, float] | None = None

    def __post_init__(self):
        if not (0.0 <= self.score <= 1.0) and not math.isnan(self.score):
            raise ValueError(f"metric score must lie in [0, 1], got {self.score}")
        if math.isnan(self.score):
            self.interval = None  # an undefined score has nothing to bound
        if self.interval is not None and not (0.0 <= self.interval[0] <= self.interval[1] <= 1.0):
            raise ValueError(f"metric interval must be [low, high] within [0, 1], got {self.interval}")

    def to_json(self) -> dict:
        bounds = {} if self.interval is None else {"interval": [round(float(end), 6) for end in self.interval]}
        return {"score": round(float(self.score), 6), **bounds, **self.raw}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: Callable
    budgets: tuple[str, ...]
    doc: str
    context: type


# Keyed by (evaluation context class, aspect name): each kind of generator is evaluated through its
# own context class, and scores the same aspects its own way.
METRICS: dict[tuple[type, str], MetricSpec] = {}


def register_metric(name: str, scores: type, budgets: tuple[str, ...] = BUDGETS):
    """Register `fn(ctx) -> MetricResult` under an aspect name, for the evaluation context class it
    reads (`scores`) and the budgets it runs in."""

    def decorate(fn):
        if name not in ASPECTS:
            raise ValueError(f"metric {name!r}: valid aspects {ASPECTS}")
        if (scores, name) in METRICS:
            raise ValueError(f"metric {scores.__name__}/{name} is registered twice")
        METRICS[(scores, name)] = MetricSpec(name, fn, tuple(budgets), (fn.__doc__ or "").strip(), scores)
        return fn

    return decorate


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        close = difflib.get_close_matches(budget, BUDGETS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown budget {budget!r}{hint}; valid: {', '.join(BUDGETS)}")
    return budget


def metrics_for(budget: str, context: type) -> list[MetricSpec]:
    """The metrics of one evaluation context class that run in `budget`, in the aspects' order."""
    check_budget(budget)
    chosen = [spec for spec in METRICS.values() if budget in spec.budgets and spec.context is context]
    return sorted(chosen, key=lambda spec: ASPECTS.index(spec.name))
