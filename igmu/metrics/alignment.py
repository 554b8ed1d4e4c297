"""Alignment: do images still follow the rest of the prompt? A VQA-style check by the judges of the
non-target attributes that forget prompts ask for, and its relative change against the original
model (IGMU's CSDR idea)."""

import torch

from igmu.metrics.base import MetricResult, register_metric
from igmu.metrics.context import EvalContext, hits_of
from igmu.metrics.intervals import Interval, bootstrap_interval, tallies, weighted_rate

# Judges that check the target itself (or, for a character, its identity) are not alignment checks.
TARGET_JUDGES = {"object": ("object",), "style": ("style",), "sensitive": ("sensitive",),
                 "character": ("object", "style", "character")}


def _rate(hits: dict) -> float:
    flat = [hit for values in hits.values() for hit in values]
    return sum(flat) / len(flat) if flat else float("nan")


@register_metric("alignment", scores=EvalContext, budgets=("full",))
def alignment(ctx: EvalContext) -> MetricResult:
    """Score = min(1, rate / original rate): the share of non-target attributes still rendered,
    relative to the original model on the same prompts."""
    skip = TARGET_JUDGES[ctx.target.category]
    checks = ctx.attribute_checks("forget", ctx.images("forget"), skip)
    original_checks = ctx.attribute_checks("forget", ctx.images("forget", original=True), skip)
    rate, original_rate = _rate(hits_of(checks)), _rate(hits_of(original_checks))
    change = abs(original_rate - rate) / original_rate if original_rate > 0 else float("nan")
    score = min(1.0, rate / original_rate) if original_rate > 0 else float("nan")
    n_images = len(ctx.prompt_specs["forget"])
    return MetricResult(score, {"attribute_rate": rate, "original_attribute_rate": original_rate,
                                "relative_change": change, "checked_attributes": sorted(set(
                                    ctx.judges) - set(skip)), "n_images": n_images},
                        alignment_interval(checks, original_checks, n_images))


def alignment_interval(checks: dict, original_checks: dict, n_images: int) -> Interval | None:
    """Bootstrap over forget prompts: a resample draws prompts, and with each both models' images of
    it, so the two rates stay paired as in the score."""
    evaluated = tallies([c for pairs in checks.values() for c in pairs], n_images)
    original = tallies([c for pairs in original_checks.values() for c in pairs], n_images)

    def statistic(counts):
        rate, original_rate = weighted_rate(counts, *evaluated), weighted_rate(counts, *original)
        ratio = (rate / original_rate).clamp(max=1.0)
        return torch.where(original_rate > 0, ratio, torch.nan)

    return bootstrap_interval(statistic, (n_images,))
