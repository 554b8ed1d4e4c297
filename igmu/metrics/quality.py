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


def excess_frechet(ctx: EvalContext, set_name: str) -> tuple[float, float]:
    """(relative FD to the original model, the same for a second original-model sample).

    With tens of images FD has a sizeable positive bias even between two samples of one model; the
    second figure measures that noise floor on the same prompts, so it can be subtracted."""
    reference = ctx.images(set_name, original=True)
    measured = relative_frechet(ctx.judges, ctx.images(set_name), reference)
    floor = relative_frechet(ctx.judges, ctx.images(set_name, original=True, replica=1), reference)
    return measured, floor


@register_metric("quality", scores=EvalContext, budgets=("full",))
def quality(ctx: EvalContext) -> MetricResult:
    """Score = mean over the two prompt sets of exp(-max(0, relative FD - noise floor)): 1 when the
    images are as close to the original model's as a second sample of the original model is, about
    0.37 when they are one reference spread further away."""
    fd_retain, floor_retain = excess_frechet(ctx, "retain")
    fd_removed, floor_removed = excess_frechet(ctx, "forget_removed")
    # IGMU's own pairing (evaluated model on forget prompts vs original on concept-removed prompts):
    # reported, not scored, since it rewards forgetting rather than image quality.
    fd_igmu = relative_frechet(ctx.judges, ctx.images("forget"), ctx.images("forget_removed", original=True))
    score = (math.exp(-max(0.0, fd_retain - floor_retain)) + math.exp(-max(0.0, fd_removed - floor_removed))) / 2
    return MetricResult(score, {"relative_fd_retain": fd_retain, "relative_fd_concept_removed": fd_removed,
                                "noise_floor_retain": floor_retain, "noise_floor_concept_removed": floor_removed,
                                "relative_fd_forget_vs_removed": fd_igmu})
