"""Forgetting: is the target gone from images of prompts that ask for it? (UnlearnCanvas's UA)"""

from igmu.metrics.base import MetricResult, register_metric
from igmu.metrics.context import EvalContext
from igmu.metrics.intervals import exact_rate_interval, one_minus


@register_metric("forgetting", scores=EvalContext)
def forgetting(ctx: EvalContext) -> MetricResult:
    """Score = 1 - residual rate: the share of forget-prompt images not forgotten. An image is
    forgotten when it is recognisable, the target's detector does not find the target, and the
    judges find the rest of its prompt (a blank or broken image has forgotten nothing)."""
    outcomes = ctx.outcomes("forget")
    not_forgotten = ~outcomes.forgotten
    residual = outcomes.residual_rate()
    per_prompt = {p.text: outcome for p, outcome in zip(ctx.prompt_specs["forget"], outcomes.names())}
    interval = one_minus(exact_rate_interval(int(not_forgotten.sum()), len(not_forgotten)))
    return MetricResult(1.0 - residual, {"residual_rate": residual, **outcomes.shares(), "n_images": len(outcomes),
                                         "per_prompt": per_prompt}, interval)
