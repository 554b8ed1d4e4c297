"""`igmu eval`, `igmu algorithms` and `igmu run`: score a model, list the algorithms, unlearn once."""

from __future__ import annotations

from pathlib import Path

import click

from igmu.cli.options import budget_option, eval_options, model_options, pop_eval_settings
from igmu.cli.output import emit, note, quiet_libraries
from igmu.cli.progress import quiet_option
from igmu.errors import UsageError


@click.command("eval")
@click.option("--model", default="base", show_default=True,
              help="'base' (the shipped world model), a model folder or a cached hub id (Stable Diffusion).")
@click.option("--target", default=None, help="World concept, or for a real model the concept to score (free text).")
@budget_option("small (forgetting, preservation) or full (all five aspects).")
@click.option("--from-run", "from_run", default=None, metavar="RUN_ID",
              help="Score a sweep trial's logged model again with exactly the settings its scorecard recorded "
                   "(the test split's when it was re-scored there; --split picks), and compare the scores.")
@click.option("--storage", default=None, help="With --from-run: results root (default $IGMU_RESULTS or ./igmu-results).")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="With --from-run: MLflow tracking URI (default $MLFLOW_TRACKING_URI, else the results root's).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save a before/after image grid (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the scorecard as JSON.")
@click.option("--original", default=None, help="The model before unlearning, that quality and alignment compare "
                                                "with (default: the shipped model for the world; for a real "
                                                "model, the one an igmu export names, else the model itself).")
@eval_options
@model_options
@quiet_option
def eval_command(model: str, target: str | None, budget: str, seed: int, from_run: str | None, storage: str | None,
                 tracking_uri: str | None, grid_path: Path | None, as_json: bool,
                 original: str | None, precision: str, device: str | None, **options) -> None:
    """Score a generator on the five aspects for one target."""
    quiet_libraries()
    if from_run:
        return rescore_command(from_run, options, storage, tracking_uri, as_json)
    if target is None:
        raise UsageError("missing option --target; valid: a world concept or, for a real model, the concept to "
                         "score (or --from-run RUN_ID to repeat a logged trial's evaluation)")
    from igmu.analysis.export import exported_from
    from igmu.metrics.scorecard import build_context, check_evaluation, format_table, scorecard
    from igmu.models.loader import check_local, kind_of, load

    settings = pop_eval_settings(options, precision)
    kind = kind_of(model)
    check_local(model)
    check_evaluation(kind, target, settings, model)
    original = original or exported_from(model)
    if original:
        kind_of(original, (kind,))
        check_local(original)
    generator = load(model, device=device, precision=precision)
    before = load(original, (kind,), device=device, precision=precision) if original else None
    ctx = build_context(generator, target, budget, original=before, seed=seed, settings=settings)
    card = scorecard(ctx)
    if grid_path:
        from igmu.metrics.grid import save_grid

        save_grid(ctx, grid_path)
    emit(card, as_json, lambda c: click.echo(format_table(c)))


def rescore_command(run_id: str, options: dict, storage: str | None, tracking_uri: str | None,
                    as_json: bool) -> None:
    from igmu.analysis.rescore import rescore_run
    from igmu.metrics.scorecard import format_table

    given = options.get("split") if click.get_current_context().get_parameter_source("split").name != "DEFAULT" \
        else None
    result = rescore_run(run_id, split=given, storage=storage, tracking_uri=tracking_uri)
    differing = [aspect for aspect, same in result["identical"].items() if not same]
    emit(result, as_json, lambda r: click.echo(format_table(r["rescored"]) + "\n" + (
        f"reproduced: every aspect identical to run {run_id}'s {r['split']} scorecard" if not differing else
        f"NOT reproduced: {', '.join(differing)} differ from run {run_id}'s {r['split']} scorecard")))
    if differing:
        raise SystemExit(1)


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {pair!r} is not key=value; e.g. --set lr=1e-4")
        out[key.strip()] = value.strip()
    return out


@click.command("algorithms")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def algorithms_command(as_json: bool) -> None:
    """List every registered unlearning algorithm with its hyperparameters, paper and repository."""
    from igmu.algorithms.base import ALGORITHMS

    rows = [cls.describe() for _, cls in sorted(ALGORITHMS.items())]

    def table(items):
        for item in items:
            click.echo(f"{item['name']}: {item['doc']}\n  paper: {item['paper']}\n  code:  {item['repo']}")
            for hp in item["hyperparameters"]:
                valid = hp.get("choices") or hp.get("range")
                click.echo(f"    {hp['name']:<18} {hp['type']:<7} default={hp['default']!s:<10} valid={valid}  {hp['doc']}")
            for category, defaults in item["category_defaults"].items():
                click.echo(f"    defaults for {category} targets: {_shown(defaults)}")
            if item["official_defaults"]:
                click.echo(f"    official defaults (Stable Diffusion): {_shown(item['official_defaults'])}")
            for category, defaults in item["official_category_defaults"].items():
                click.echo(f"    official defaults for {category} targets: {_shown(defaults)}")

    emit(rows, as_json, table)


def _shown(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


@click.command("run")
@click.option("--algorithm", required=True, help="Algorithm name (see 'igmu algorithms').")
@click.option("--target", required=True, help="World concept, or for a real model the concept to unlearn.")
@click.option("--model", default="base", show_default=True, help="'base' (the world model) or a model folder / hub id.")
@click.option("--anchor", default=None, help="Anchor prompt that replaces the target (real models; default: "
                                             "the category's anchor).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a hyperparameter (repeatable).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Save the model, changed weights, scorecard and image grid here.")
@budget_option("Evaluation budget: small (forgetting, preservation) or full (all five aspects).")
@click.option("--json", "as_json", is_flag=True, help="Print the scorecard as JSON.")
@eval_options
@model_options
@quiet_option
def run_command(algorithm: str, target: str, model: str, anchor: str | None, sets: tuple[str, ...], seed: int,
                out: Path | None, budget: str, as_json: bool, precision: str, device: str | None, **options) -> None:
    """One unlearning run followed by the five-aspect scorecard plus efficiency."""
    quiet_libraries()
    from igmu.metrics.context import can_score
    from igmu.metrics.scorecard import build_context, check_evaluation, format_table, scorecard
    from igmu.models.loader import check_local
    from igmu.run import build_unlearner, load_model_for, model_kind_for, save_run, unlearn

    settings = pop_eval_settings(options, precision)
    overrides = _parse_sets(sets)
    kind = model_kind_for(algorithm, model)
    check_local(model)
    scored = can_score(kind)
    if scored:
        check_evaluation(kind, target, settings, model)
    generator = load_model_for(algorithm, model, device=device, precision=precision)
    unlearner = build_unlearner(algorithm, generator, target, overrides, seed=seed, category=settings.category,
                                anchor=anchor, prompts=settings.prompts)
    efficiency, changed = unlearn(unlearner)
    generator.source = f"{algorithm}({target})"
    if scored:
        ctx = build_context(generator, target, budget, seed=seed, settings=settings)
        card = scorecard(ctx)
    else:
        ctx = None
        note(f"the five-aspect scorecard does not score {generator.kind.description} yet; "
             "reporting efficiency for this run")
        card = {"model": model, "target": target, "category": unlearner.task.category, "aspects": {}}
    card["algorithm"] = algorithm
    card["params"] = dict(vars(unlearner.params))
    card["efficiency"] = efficiency
    if out:
        save_run(out, unlearner, card, changed)
        if ctx is not None:
            from igmu.metrics.grid import save_grid

            save_grid(ctx, out / "grid.png")
    emit(card, as_json, lambda c: click.echo(format_table(c)))
