"""The metric registry and the one result shape every metric returns."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable

from igmu.errors import UsageError

ASPECTS = ("forgetting", "preservation", "quality", "alignment", "robustness")
BUDGETS = ("small", "full")
# Metric families, by the kind of generator they score: text-to-image models (the world's diffusion
# model) and image-to-image models (the world's inpainting/outpainting generator).
FAMILIES = ("t2i", "i2i")


@dataclass
class MetricResult:
    """A score in [0, 1] (higher is better) plus the raw figures it came from."""

    score: float
    raw: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (0.0 <= self.score <= 1.0) and not math.isnan(self.score):
            raise ValueError(f"metric score must lie in [0, 1], got {self.score}")

    def to_json(self) -> dict:
        return {"score": round(float(self.score), 6), **self.raw}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: Callable
    budgets: tuple[str, ...]
    doc: str
    family: str = "t2i"


# Keyed by (family, aspect name): each family scores the same aspects its own way.
METRICS: dict[tuple[str, str], MetricSpec] = {}


def register_metric(name: str, budgets: tuple[str, ...] = BUDGETS, family: str = "t2i"):
    """Register `fn(ctx) -> MetricResult` under an aspect name, for the budgets it runs in and the
    family of generators it scores."""

    def decorate(fn):
        if name not in ASPECTS or family not in FAMILIES:
            raise ValueError(f"metric {family}/{name}: valid aspects {ASPECTS}, families {FAMILIES}")
        if (family, name) in METRICS:
            raise ValueError(f"metric {family}/{name} is registered twice")
        METRICS[(family, name)] = MetricSpec(name, fn, tuple(budgets), (fn.__doc__ or "").strip(), family)
        return fn

    return decorate


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        close = difflib.get_close_matches(budget, BUDGETS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown budget {budget!r}{hint}; valid: {', '.join(BUDGETS)}")
    return budget


def metrics_for(budget: str, family: str = "t2i") -> list[MetricSpec]:
    check_budget(budget)
    return [spec for spec in METRICS.values() if budget in spec.budgets and spec.family == family]
