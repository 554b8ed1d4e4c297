"""Quality: Frechet distance in the judges' feature space between the evaluated and the original
model's images, on retain prompts and on forget prompts with the concept word removed (IGMU)."""

import math
from dataclasses import dataclass

import torch

from igmu.metrics.base import MetricResult, register_metric
from igmu.metrics.context import EvalContext
from igmu.metrics.frechet import frechet_distance, kernel_distance, resampled_frechet
from igmu.metrics.intervals import bootstrap_interval

Features = dict[str, torch.Tensor]  # judge name -> [N, D] features


def judge_features(judges, images: torch.Tensor) -> Features:
    return {name: judge.predict(images)["features"] for name, judge in judges.items()}


def relative_frechet(judges, images: torch.Tensor, reference: torch.Tensor) -> float:
    """Per judge, FD divided by the reference features' total variance; averaged over judges.

    Dividing by the total variance makes the number unit-free: 0 = same distribution, 1 = shifted
    by about one reference spread.
    """
    return relative_frechet_of(judge_features(judges, images), judge_features(judges, reference))


def relative_frechet_of(features: Features, reference: Features) -> float:
    """`relative_frechet` of features already computed."""
    values = []
    for name, feats in features.items():
        ref = reference[name]
        values.append(frechet_distance(feats, ref) / max(float(torch.cov(ref.double().T).trace()), 1e-12))
    return sum(values) / len(values)


def resampled_relative_frechet(features: Features, reference: Features, counts: torch.Tensor) -> torch.Tensor:
    """`relative_frechet_of` for each bootstrap resample of the (image, reference image) pairs: [R]."""
    values = []
    for name, feats in features.items():
        distance, variance = resampled_frechet(feats, reference[name], counts)
        values.append(distance / variance.clamp(min=1e-12))
    return torch.stack(values).mean(0)


def mean_kernel_distance(features: Features, reference: Features) -> float:
    """KID per judge, averaged over judges like relative FD; NaN below two images a set (KID needs pairs)."""
    if any(len(feats) < 2 or len(reference[name]) < 2 for name, feats in features.items()):
        return math.nan
    values = [kernel_distance(feats, reference[name]) for name, feats in features.items()]
    return sum(values) / len(values)


@dataclass(frozen=True)
class QualitySample:
    """Judge features of one prompt set's images: the evaluated model's, the original model's
    (the reference) and a second original-model sample (the noise floor); row i of each is prompt i."""

    evaluated: Features
    reference: Features
    replica: Features

    @classmethod
    def of(cls, ctx: EvalContext, set_name: str) -> "QualitySample":
        return cls(judge_features(ctx.judges, ctx.images(set_name)),
                   judge_features(ctx.judges, ctx.images(set_name, original=True)),
                   judge_features(ctx.judges, ctx.images(set_name, original=True, replica=1)))

    @property
    def size(self) -> int:
        return len(next(iter(self.reference.values())))

    def excess_frechet(self) -> tuple[float, float]:
        """(relative FD to the original model, the same for the second original-model sample).

        With tens of images FD has a sizeable positive bias even between two samples of one model; the
        second figure measures that noise floor on the same prompts, so it can be subtracted."""
        return relative_frechet_of(self.evaluated, self.reference), relative_frechet_of(self.replica, self.reference)

    def kernel_distances(self) -> tuple[float, float]:
        """(KID to the original model, the same for the second original-model sample)."""
        return mean_kernel_distance(self.evaluated, self.reference), mean_kernel_distance(self.replica, self.reference)

    def resampled_closeness(self, counts: torch.Tensor) -> torch.Tensor:
        """The set's term of the score for each resample of its prompts. A resample takes the same
        prompts from all three samples, so the bias that repeated images add to FD hits the measured
        distance and the noise floor alike, and their difference stays comparable."""
        excess = (resampled_relative_frechet(self.evaluated, self.reference, counts)
                  - resampled_relative_frechet(self.replica, self.reference, counts))
        return torch.exp(-excess.clamp(min=0))


@register_metric("quality", scores=EvalContext, budgets=("full",))
def quality(ctx: EvalContext) -> MetricResult:
    """Score = mean over the two prompt sets of exp(-max(0, relative FD - noise floor)): 1 when the
    images are as close to the original model's as a second sample of the original model is, about
    0.37 when they are one reference spread further away."""
    retain, removed = QualitySample.of(ctx, "retain"), QualitySample.of(ctx, "forget_removed")
    fd_retain, floor_retain = retain.excess_frechet()
    fd_removed, floor_removed = removed.excess_frechet()
    kid_retain, kid_floor_retain = retain.kernel_distances()
    kid_removed, kid_floor_removed = removed.kernel_distances()
    # IGMU's own pairing (evaluated model on forget prompts vs original on concept-removed prompts):
    # reported, not scored, since it rewards forgetting rather than image quality.
    fd_igmu = relative_frechet_of(judge_features(ctx.judges, ctx.images("forget")), removed.reference)
    score = (math.exp(-max(0.0, fd_retain - floor_retain)) + math.exp(-max(0.0, fd_removed - floor_removed))) / 2
    interval = bootstrap_interval(
        lambda retain_counts, removed_counts: (retain.resampled_closeness(retain_counts)
                                               + removed.resampled_closeness(removed_counts)) / 2,
        (retain.size, removed.size))
    return MetricResult(score, {"relative_fd_retain": fd_retain, "relative_fd_concept_removed": fd_removed,
                                "noise_floor_retain": floor_retain, "noise_floor_concept_removed": floor_removed,
                                "relative_fd_forget_vs_removed": fd_igmu,
                                "kid_retain": kid_retain, "kid_concept_removed": kid_removed,
                                "kid_noise_floor_retain": kid_floor_retain,
                                "kid_noise_floor_concept_removed": kid_floor_removed,
                                "n_images": {"retain": retain.size, "concept_removed": removed.size}}, interval)
