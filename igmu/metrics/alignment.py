"""Alignment: do images still follow the rest of the prompt? A VQA-style check by the judges of the
non-target attributes that forget prompts ask for, and its relative change against the original
model (IGMU's CSDR idea)."""

from igmu.metrics.base import MetricResult, register_metric
from igmu.metrics.context import EvalContext

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
    rate = _rate(ctx.attribute_hits("forget", ctx.images("forget"), skip))
    original_rate = _rate(ctx.attribute_hits("forget", ctx.images("forget", original=True), skip))
    change = abs(original_rate - rate) / original_rate if original_rate > 0 else float("nan")
    score = min(1.0, rate / original_rate) if original_rate > 0 else float("nan")
    return MetricResult(score, {"attribute_rate": rate, "original_attribute_rate": original_rate,
                                "relative_change": change, "checked_attributes": sorted(set(
                                    ctx.judges) - set(skip))})
