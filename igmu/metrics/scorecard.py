"""The five-aspect scorecard: one function that every command (eval, run, sweep) calls."""

from __future__ import annotations

import math

from igmu import progress
from igmu.metrics.base import metrics_for
from igmu.metrics.cache import ImageCache
from igmu.metrics.context import Budget, EvalSettings, budget_of, context_for
from igmu.metrics.recognisability import degeneracy
from igmu.metrics.record import evaluation_record


def build_context(model, target: str, budget: str | Budget = "full", original=None,
                  judges=None, cache: ImageCache | None = None, seed: int = 0,
                  settings: EvalSettings | None = None):
    """The evaluation context of `model`'s kind, for one target and budget."""
    context = context_for(model.kind, model.source)
    if not isinstance(budget, Budget):
        budget = budget_of(context, budget)
    settings = settings or EvalSettings()
    ctx = context.build(model, target, budget, original=original, judges=judges, cache=cache, seed=seed,
                        settings=settings)
    ctx.eval_settings = settings  # what the scorecard's `reproduce` block records
    return ctx


def check_evaluation(kind, target: str, settings: EvalSettings | None = None, source: str = "") -> None:
    """Refuse, before any weights load, a kind nothing scores, a bad target or bad evaluation settings."""
    context_for(kind, source).check(kind, target, settings or EvalSettings())


def scorecard(ctx) -> dict:
    """Run every metric of the context's class and budget; aspects come out in the canonical order.

    Aspects a kind cannot measure are named by its context, with the reason, and left out of
    `aspects` (as the small budget leaves out what it does not run): no number is made up."""
    aspects = _judged_aspects(ctx)
    card = {"model": ctx.model.source, "target": ctx.target.name, "category": ctx.target.category,
            "budget": ctx.budget.name, "seed": ctx.seed, "split": ctx.split, **_degeneracy(ctx), "aspects": aspects}
    record = evaluation_record(ctx, getattr(ctx, "eval_settings", None) or EvalSettings())
    return {**card, **ctx.extra_blocks(), "reproduce": record}


def _degeneracy(ctx) -> dict:
    """`degenerate` (more than half the images forgetting and robustness judged are unrecognisable)
    and that share. Contexts whose metrics never judge recognisability (image-to-image) keep no
    `judged` record: not degenerate, share unknown."""
    judged = getattr(ctx, "judged", {})
    return degeneracy(outcomes.unrecognisable for outcomes in judged.values())


def _judged_aspects(ctx) -> dict:
    """Each metric of the budget in turn, in the aspects' order; the progress line names the one running."""
    specs = metrics_for(ctx.budget.name, type(ctx))
    aspects = {}
    with progress.task("aspects judged", total=len(specs)) as shown:
        for spec in specs:
            shown.update(info=spec.name)
            aspects[spec.name] = spec.fn(ctx).to_json()
            shown.advance(info="")
    return aspects


# Scorecard entries that are not printed as a block of their own.
UNPRINTED_BLOCKS = ("aspects", "not_applicable", "params", "reproduce")


def format_table(card: dict) -> str:
    lines = [f"model={card['model']}  target={card['target']} ({card['category']})  budget={card['budget']}"
             f"  split={card.get('split', 'validation')}"]
    if card.get("degenerate"):
        lines.append(f"  DEGENERATE: {_short(card['unrecognisable_share'])} of the judged images are unrecognisable")
    for aspect, result in card["aspects"].items():
        details = ", ".join(f"{k}={_short(v)}" for k, v in result.items()
                            if k != "score" and not isinstance(v, (dict, list)))
        lines.append(f"  {aspect:<13} {_short(result['score']):>6} {_interval(result.get('interval')):<12}  {details}")
    for name, block in card.items():
        if isinstance(block, dict) and name not in UNPRINTED_BLOCKS:
            lines.append(f"  {name:<13} " + ", ".join(f"{k}={_short(v)}" for k, v in block.items()
                                                      if not isinstance(v, list)))
    return "\n".join(lines)


def _interval(bounds) -> str:
    """The 95% interval beside a score, two decimals: enough to see how far the score can be trusted."""
    return "" if bounds is None else f"[{bounds[0]:.2f}, {bounds[1]:.2f}]"


def _short(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)
