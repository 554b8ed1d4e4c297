"""The five-aspect scorecard: one function that every command (eval, run, sweep) calls."""

from __future__ import annotations

import math

from igmu.metrics.base import ASPECTS, check_budget, metrics_for
from igmu.metrics.cache import ImageCache
from igmu.metrics.context import BUDGET_SIZES, Budget, EvalContext
from igmu.metrics.judges import Judge, load_judges
from igmu.platform.concepts import get_concept
from igmu.platform.errors import UsageError
from igmu.platform.generator import Generator, assets_dir, load_generator


def build_context(model: Generator, target: str, budget: str | Budget = "full", original: Generator | None = None,
                  judges: dict[str, Judge] | None = None, cache: ImageCache | None = None,
                  seed: int = 0) -> EvalContext:
    concept = get_concept(target)
    if not isinstance(budget, Budget):
        budget = BUDGET_SIZES[check_budget(budget)]
    if model.kind != "world":
        raise UsageError(f"model {model.source!r} is a {model.kind!r} model; the five-aspect scorecard "
                         "currently scores world models only (valid: 'base' or a saved world model folder)")
    return EvalContext(
        target=concept, model=model, original=original or load_generator("world", device=str(model.device)),
        judges=judges or load_judges(assets_dir() / "judges", device=model.device),
        budget=budget, cache=cache or ImageCache(), seed=seed)


def scorecard(ctx: EvalContext) -> dict:
    """Run every metric of the context's budget; aspects come out in the canonical order."""
    aspects = {}
    for spec in sorted(metrics_for(ctx.budget.name), key=lambda s: ASPECTS.index(s.name)):
        aspects[spec.name] = spec.fn(ctx).to_json()
    return {"model": ctx.model.source, "target": ctx.target.name, "category": ctx.target.category,
            "budget": ctx.budget.name, "seed": ctx.seed, "aspects": aspects}


def evaluate(model: Generator, target: str, budget: str | Budget = "full", **context) -> dict:
    return scorecard(build_context(model, target, budget, **context))


def format_table(card: dict) -> str:
    lines = [f"model={card['model']}  target={card['target']} ({card['category']})  budget={card['budget']}"]
    for aspect, result in card["aspects"].items():
        details = ", ".join(f"{k}={_short(v)}" for k, v in result.items()
                            if k != "score" and not isinstance(v, (dict, list)))
        lines.append(f"  {aspect:<13} {_short(result['score']):>6}   {details}")
    if "efficiency" in card:
        lines.append("  efficiency    " + ", ".join(f"{k}={_short(v)}" for k, v in card["efficiency"].items()))
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)
