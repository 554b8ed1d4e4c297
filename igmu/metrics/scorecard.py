"""The five-aspect scorecard: one function that every command (eval, run, sweep) calls."""

from __future__ import annotations

import math

from igmu.metrics.base import check_budget, metrics_for
from igmu.metrics.cache import ImageCache
from igmu.metrics.context import BUDGET_SIZES, Budget, context_for
from igmu.models.judges import Judge
from igmu.world.concepts import get_concept


def build_context(model, target: str, budget: str | Budget = "full", original=None,
                  judges: dict[str, Judge] | None = None, cache: ImageCache | None = None, seed: int = 0):
    """The evaluation context of `model`'s kind, for one target and budget."""
    context = context_for(model.kind, model.source)
    if not isinstance(budget, Budget):
        budget = BUDGET_SIZES[check_budget(budget)]
    concept = get_concept(model.kind.normalise_target(target))
    return context.build(model, concept, budget, original=original, judges=judges, cache=cache, seed=seed)


def scorecard(ctx) -> dict:
    """Run every metric of the context's class and budget; aspects come out in the canonical order.

    Aspects a kind cannot measure are named by its context, with the reason, and left out of
    `aspects` (as the small budget leaves out what it does not run): no number is made up."""
    aspects = {spec.name: spec.fn(ctx).to_json() for spec in metrics_for(ctx.budget.name, type(ctx))}
    card = {"model": ctx.model.source, "target": ctx.target.name, "category": ctx.target.category,
            "budget": ctx.budget.name, "seed": ctx.seed, "aspects": aspects}
    return {**card, **ctx.extra_blocks()}


# Scorecard entries that are not printed as a block of their own.
UNPRINTED_BLOCKS = ("aspects", "not_applicable", "params")


def format_table(card: dict) -> str:
    lines = [f"model={card['model']}  target={card['target']} ({card['category']})  budget={card['budget']}"]
    for aspect, result in card["aspects"].items():
        details = ", ".join(f"{k}={_short(v)}" for k, v in result.items()
                            if k != "score" and not isinstance(v, (dict, list)))
        lines.append(f"  {aspect:<13} {_short(result['score']):>6}   {details}")
    for name, block in card.items():
        if isinstance(block, dict) and name not in UNPRINTED_BLOCKS:
            lines.append(f"  {name:<13} " + ", ".join(f"{k}={_short(v)}" for k, v in block.items()
                                                      if not isinstance(v, list)))
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)
