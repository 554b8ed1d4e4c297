"""Preservation: does everything else stay? UnlearnCanvas's in-domain and cross-domain retain
accuracy (IRA, CRA) plus accuracy on concepts related to the target (HUB's pinpoint-ness)."""

import math

from igmu.metrics.base import MetricResult, register_metric
from igmu.metrics.context import EvalContext, hits_of
from igmu.metrics.intervals import Interval, bootstrap_interval, mean_of_known, tallies, weighted_rate

# Which judge checks "the same category as the target".
IN_DOMAIN_JUDGE = {"object": "object", "style": "style", "sensitive": "sensitive", "character": "character"}


def _rate(hits: list) -> float:
    return float(sum(hits) / len(hits)) if hits else math.nan


@register_metric("preservation", scores=EvalContext)
def preservation(ctx: EvalContext) -> MetricResult:
    """Score = mean of in-domain retain accuracy, cross-domain retain accuracy and related-concept
    accuracy (each a share of judge checks passed), so each failure mode weighs a third."""
    in_domain = IN_DOMAIN_JUDGE[ctx.target.category]
    retain_checks = ctx.attribute_checks("retain", ctx.images("retain"))
    related_checks = ctx.attribute_checks("related", ctx.images("related"))
    retain, related = hits_of(retain_checks), hits_of(related_checks)
    ira = _rate(retain[in_domain])
    cra = _rate([hit for name, hits in retain.items() if name != in_domain for hit in hits])
    related_accuracy = _rate([hit for hits in related.values() for hit in hits])
    parts = [x for x in (ira, cra, related_accuracy) if not math.isnan(x)]
    raw = {"in_domain_accuracy": ira, "cross_domain_accuracy": cra, "related_accuracy": related_accuracy,
           "per_judge": {name: _rate(hits) for name, hits in retain.items()},
           "n_images": {"retain": len(ctx.prompt_specs["retain"]), "related": len(ctx.prompt_specs["related"])}}
    return MetricResult(sum(parts) / len(parts), raw, preservation_interval(ctx, in_domain, retain_checks,
                                                                            related_checks))


def preservation_interval(ctx: EvalContext, in_domain: str, retain_checks: dict, related_checks: dict) -> Interval | None:
    """Bootstrap over retain images and, on their own, related images: each resample recomputes the
    three accuracies from the checks of the images it draws, and their mean."""
    n_retain, n_related = len(ctx.prompt_specs["retain"]), len(ctx.prompt_specs["related"])
    in_domain_tally = tallies(retain_checks[in_domain], n_retain)
    cross_tally = tallies([c for name, checks in retain_checks.items() if name != in_domain for c in checks], n_retain)
    related_tally = tallies([c for checks in related_checks.values() for c in checks], n_related)

    def statistic(retain_counts, related_counts):
        return mean_of_known(weighted_rate(retain_counts, *in_domain_tally), weighted_rate(retain_counts, *cross_tally),
                             weighted_rate(related_counts, *related_tally))

    return bootstrap_interval(statistic, (n_retain, n_related))
