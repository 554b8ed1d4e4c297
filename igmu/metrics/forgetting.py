"""Forgetting: is the target gone from images of prompts that ask for it? (UnlearnCanvas's UA)"""

from igmu.metrics.base import MetricResult, register_metric
from igmu.metrics.context import EvalContext
from igmu.metrics.intervals import exact_rate_interval, one_minus


@register_metric("forgetting", scores=EvalContext)
def forgetting(ctx: EvalContext) -> MetricResult:
    """Score = 1 - residual rate: the share of forget-prompt images in which the target's detector
    still finds the target."""
    present = ctx.target_present(ctx.images("forget"))
    residual = float(present.float().mean())
    per_prompt = {p.text: int(hit) for p, hit in zip(ctx.prompt_specs["forget"], present.tolist())}
    interval = one_minus(exact_rate_interval(int(present.sum()), len(present)))
    return MetricResult(1.0 - residual, {"residual_rate": residual, "n_images": len(present),
                                         "per_prompt": per_prompt}, interval)
