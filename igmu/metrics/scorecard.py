"""The five-aspect scorecard: one function that every command (eval, run, sweep) calls."""

from __future__ import annotations

import math

from igmu.errors import UsageError
from igmu.metrics.base import ASPECTS, check_budget, metrics_for
from igmu.metrics.cache import ImageCache
from igmu.metrics.context import BUDGET_SIZES, Budget, EvalContext
from igmu.models.judges import Judge, load_judges
from igmu.models.text_to_image import Generator, load_generator
from igmu.world.assets import assets_dir
from igmu.world.concepts import get_concept


def build_context(model: Generator, target: str, budget: str | Budget = "full", original: Generator | None = None,
                  judges: dict[str, Judge] | None = None, cache: ImageCache | None = None,
                  seed: int = 0) -> EvalContext:
    concept = get_concept(target)
    if not isinstance(budget, Budget):
        budget = BUDGET_SIZES[check_budget(budget)]
    if model.kind == "i2i":
        return _i2i_context(model, concept, budget, original, judges, seed)
    if model.kind != "world":
        raise UsageError(f"model {model.source!r} is a {model.kind!r} model; the five-aspect scorecard "
                         "currently scores world models only (valid: 'base' or a saved world model folder)")
    return EvalContext(
        target=concept, model=model, original=original or load_generator("world", device=str(model.device)),
        judges=judges or load_judges(assets_dir() / "judges", device=model.device),
        budget=budget, cache=cache or ImageCache(), seed=seed)


def _i2i_context(model, concept, budget: Budget, original, judges, seed: int):
    from igmu.metrics.image_to_image import I2IEvalContext
    from igmu.models.image_to_image import load_i2i

    return I2IEvalContext(target=concept, model=model, original=original or load_i2i("world", device=str(model.device)),
                          judges=judges or load_judges(assets_dir() / "judges", device=model.device),
                          budget=budget, seed=seed)


def scorecard(ctx: EvalContext) -> dict:
    """Run every metric of the context's budget and family; aspects come out in the canonical order.

    Aspects a family cannot measure are named, with the reason, under `not_applicable` and left
    out of `aspects` (as the small budget leaves out what it does not run): no number is made up."""
    aspects = {}
    for spec in sorted(metrics_for(ctx.budget.name, ctx.family), key=lambda s: ASPECTS.index(s.name)):
        aspects[spec.name] = spec.fn(ctx).to_json()
    card = {"model": ctx.model.source, "target": ctx.target.name, "category": ctx.target.category,
            "budget": ctx.budget.name, "seed": ctx.seed, "aspects": aspects}
    if ctx.family == "i2i":
        from igmu.metrics.image_to_image import NOT_APPLICABLE, similarity_block

        card["not_applicable"] = dict(NOT_APPLICABLE)
        card["i2i"] = similarity_block(ctx)
    return card


def evaluate(model: Generator, target: str, budget: str | Budget = "full", **context) -> dict:
    return scorecard(build_context(model, target, budget, **context))


def format_table(card: dict) -> str:
    lines = [f"model={card['model']}  target={card['target']} ({card['category']})  budget={card['budget']}"]
    for aspect, result in card["aspects"].items():
        details = ", ".join(f"{k}={_short(v)}" for k, v in result.items()
                            if k != "score" and not isinstance(v, (dict, list)))
        lines.append(f"  {aspect:<13} {_short(result['score']):>6}   {details}")
    if "i2i" in card:
        lines.append("  i2i           " + ", ".join(f"{k}={_short(v)}" for k, v in card["i2i"].items()
                                                    if not isinstance(v, list)))
    if "efficiency" in card:
        lines.append("  efficiency    " + ", ".join(f"{k}={_short(v)}" for k, v in card["efficiency"].items()))
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)
