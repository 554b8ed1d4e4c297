"""Quality: Frechet distance in the judges' feature space between the evaluated and the original
model's images, on retain prompts and on forget prompts with the concept word removed (IGMU)."""

import math

import torch

from igmu.metrics.base import MetricResult, register_metric
from igmu.metrics.context import EvalContext
from igmu.metrics.frechet import frechet_distance


def relative_frechet(judges, images: torch.Tensor, reference: torch.Tensor) -> float:
    """Per judge, FD divided by the reference features' total variance; averaged over judges.

    Dividing by the total variance makes the number unit-free: 0 = same distribution, 1 = shifted
    by about one reference spread.
    """
    values = []
    for judge in judges.values():
        feats, ref = judge.predict(images)["features"], judge.predict(reference)["features"]
        values.append(frechet_distance(feats, ref) / max(float(torch.cov(ref.double().T).trace()), 1e-12))
    return sum(values) / len(values)


@register_metric("quality", budgets=("full",))
def quality(ctx: EvalContext) -> MetricResult:
    """Score = mean over the two prompt sets of exp(-relative FD): 1 for an identical distribution,
    about 0.37 when the distributions are one reference spread apart."""
    fd_retain = relative_frechet(ctx.judges, ctx.images("retain"), ctx.images("retain", original=True))
    fd_removed = relative_frechet(ctx.judges, ctx.images("forget_removed"),
                                  ctx.images("forget_removed", original=True))
    # IGMU's own pairing (evaluated model on forget prompts vs original on concept-removed prompts):
    # reported, not scored, since it rewards forgetting rather than image quality.
    fd_igmu = relative_frechet(ctx.judges, ctx.images("forget"), ctx.images("forget_removed", original=True))
    score = (math.exp(-fd_retain) + math.exp(-fd_removed)) / 2
    return MetricResult(score, {"relative_fd_retain": fd_retain, "relative_fd_concept_removed": fd_removed,
                                "relative_fd_forget_vs_removed": fd_igmu})
