"""The `igmu` command line. It parses arguments and calls the platform; it holds no logic of its own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from igmu.platform.errors import UsageError


def _quiet_libraries() -> None:
    """Nothing is ever downloaded at run time, and library progress bars drown the CLI's output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _emit(data, as_json: bool, table) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        table(data)


@click.group()
@click.version_option(package_name="igmu")
def cli() -> None:
    """igmu: sweep machine-unlearning algorithms for image generators and score every run on five
    aspects (forgetting, preservation, quality, alignment, robustness)."""


@cli.group()
def world() -> None:
    """The embedded concept world: concepts, prompt sets, the shipped generator and judges."""


@world.command("concepts")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def world_concepts(as_json: bool) -> None:
    """List the world's concepts with category, related concepts, synonyms and translations."""
    from igmu.platform.concepts import ALL_CONCEPTS

    def table(rows):
        for row in rows:
            translations = "; ".join(f"{k}: {', '.join(v)}" for k, v in row["translations"].items())
            click.echo(f"{row['name']:<10} {row['category']:<10} related={','.join(row['related']):<22} "
                       f"synonyms={','.join(row['synonyms']):<22} {translations}")

    _emit([c.to_json() for c in ALL_CONCEPTS], as_json, table)


@world.command("prompts")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
def world_prompts(target: str, as_json: bool) -> None:
    """Show the deterministic forget / retain / related / paraphrase prompt sets of TARGET."""
    from igmu.platform.prompts import prompt_sets

    def table(sets):
        for name, prompts in sets.items():
            click.echo(f"{name} ({len(prompts)}): {'; '.join(prompts[:4])}{' ...' if len(prompts) > 4 else ''}")

    _emit(prompt_sets(target).to_json(), as_json, table)


@world.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--model", default="world", show_default=True, help="Generator to check: 'world' or a folder.")
@click.option("--judge-images", default=2000, show_default=True, type=click.IntRange(10), help="Fresh renders per judge.")
@click.option("--generator-images", default=400, show_default=True, type=click.IntRange(10),
              help="Images sampled from held-out prompts.")
@click.option("--i2i-images", default=1000, show_default=True, type=click.IntRange(10),
              help="Fresh renders the image-to-image generator completes, per mask type.")
def world_check(as_json: bool, model: str, judge_images: int, generator_images: int, i2i_images: int) -> None:
    """Score the judges on fresh renders, the generator on held-out prompts and the image-to-image
    generator on fresh masked renders (exit 1 if below target)."""
    _quiet_libraries()
    from igmu.platform.check import unmet_targets
    from igmu.platform.check import world_check as run_check

    report = run_check(judge_images, generator_images, model, i2i_images)

    def table(rep):
        for group in ("judges", "generator", "i2i"):
            click.echo(f"{group}: " + "  ".join(f"{k}={v:.3f}" for k, v in rep[group].items()))
        click.echo(f"seconds: {rep['seconds']}")

    _emit(report, as_json, table)
    unmet = unmet_targets(report)
    if unmet:
        click.echo("below target: " + "; ".join(unmet), err=True)
        sys.exit(1)


@world.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write (default: the shipped assets, IGMU_ASSETS if set).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--judge-steps", default=None, type=click.IntRange(1), help="Judge training steps.")
@click.option("--generator-steps", default=None, type=click.IntRange(1), help="Generator training steps.")
@click.option("--generator-lr", default=None, type=click.FloatRange(1e-6, 1e-1), help="Generator peak learning rate.")
@click.option("--init-from", default=None, type=click.Path(file_okay=False, exists=True),
              help="Continue training this generator folder instead of starting from scratch.")
@click.option("--i2i-steps", default=None, type=click.IntRange(1), help="Image-to-image generator training steps.")
@click.option("--only", type=click.Choice(["judges", "generator", "i2i"]), default=None, help="Build one part only.")
def world_build(out: Path | None, seed: int, judge_steps: int | None, generator_steps: int | None,
                generator_lr: float | None, init_from: str | None, i2i_steps: int | None, only: str | None) -> None:
    """Train the judges, the base generator and the image-to-image generator from scratch, seeded,
    and save them as safetensors."""
    _quiet_libraries()
    from igmu.platform.build import BuildConfig, build_world
    from igmu.platform.generator import assets_dir

    config = BuildConfig(seed=seed)
    if judge_steps:
        config.judge_steps = judge_steps
    if generator_steps:
        config.generator_steps = generator_steps
    if generator_lr:
        config.generator_lr = generator_lr
    if i2i_steps:
        config.i2i_steps = i2i_steps
    config.init_from = init_from
    parts = (only,) if only else ("judges", "generator", "i2i")
    timings = build_world(out or assets_dir(), config, log=lambda line: click.echo(line, err=True), parts=parts)
    click.echo(json.dumps(timings))


@cli.command("eval")
@click.option("--model", default="base", show_default=True,
              help="'base' (the shipped world model) or a model folder (text-to-image or image-to-image).")
@click.option("--target", required=True, help="Concept to score forgetting of (see 'igmu world concepts').")
@click.option("--budget", default="full", show_default=True, help="small (forgetting, preservation) or full (all five).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save a before/after image grid (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the scorecard as JSON.")
def eval_command(model: str, target: str, budget: str, seed: int, grid_path: Path | None, as_json: bool) -> None:
    """Score a generator on the five aspects for one target concept."""
    _quiet_libraries()
    from igmu.metrics.base import check_budget
    from igmu.metrics.scorecard import build_context, format_table, scorecard
    from igmu.platform.concepts import get_concept
    from igmu.platform.generator import load_generator
    from igmu.platform.i2i import is_i2i_folder, load_i2i

    get_concept(target)
    check_budget(budget)
    generator = load_i2i(model) if is_i2i_folder(model) else load_generator(model)
    ctx = build_context(generator, target, budget, seed=seed)
    card = scorecard(ctx)
    if grid_path:
        from igmu.metrics.grid import save_grid

        save_grid(ctx, grid_path)
    _emit(card, as_json, lambda c: click.echo(format_table(c)))


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {pair!r} is not key=value; e.g. --set lr=1e-4")
        out[key.strip()] = value.strip()
    return out


@cli.command("algorithms")
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
                shown = ", ".join(f"{k}={v}" for k, v in defaults.items())
                click.echo(f"    defaults for {category} targets: {shown}")

    _emit(rows, as_json, table)


@cli.command("run")
@click.option("--algorithm", required=True, help="Algorithm name (see 'igmu algorithms').")
@click.option("--target", required=True, help="World concept, or for an SD model the prompt to unlearn.")
@click.option("--model", default="base", show_default=True, help="'base' (the world model) or a model folder / hub id.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a hyperparameter (repeatable).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Save the model, changed weights, scorecard and image grid here.")
@click.option("--budget", default="full", show_default=True, help="Evaluation budget: small or full.")
@click.option("--json", "as_json", is_flag=True, help="Print the scorecard as JSON.")
def run_command(algorithm: str, target: str, model: str, sets: tuple[str, ...], seed: int, out: Path | None,
                budget: str, as_json: bool) -> None:
    """One unlearning run followed by the five-aspect scorecard plus efficiency."""
    _quiet_libraries()
    from igmu.metrics.base import check_budget
    from igmu.metrics.scorecard import build_context, format_table, scorecard
    from igmu.platform.run import build_unlearner, load_model_for, save_run, unlearn

    check_budget(budget)
    overrides = _parse_sets(sets)
    generator = load_model_for(algorithm, model)
    unlearner = build_unlearner(algorithm, generator, target, overrides, seed=seed)
    efficiency, changed = unlearn(unlearner, progress=not as_json)
    generator.source = f"{algorithm}({target})"
    if generator.kind in ("world", "i2i"):
        ctx = build_context(generator, target, budget, seed=seed)
        card = scorecard(ctx)
    else:
        ctx = None
        click.echo("igmu: note: the five-aspect scorecard scores world models only; "
                   "reporting efficiency for this Stable Diffusion run", err=True)
        card = {"model": model, "target": target, "category": unlearner.task.category, "aspects": {}}
    card["algorithm"] = algorithm
    card["params"] = dict(vars(unlearner.params))
    card["efficiency"] = efficiency
    if out:
        save_run(out, unlearner, card, changed)
        if ctx is not None:
            from igmu.metrics.grid import save_grid

            save_grid(ctx, out / "grid.png")
    _emit(card, as_json, lambda c: click.echo(format_table(c)))


@cli.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--address", default=None, help="Join a Ray cluster ('auto' or ray://host:port); default: a local Ray.")
@click.option("--storage", default=None, help="Results root (a path or s3:// URI); default: $IGMU_RESULTS or ./igmu-results.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI; default: the sweep file's tracking.uri, else $MLFLOW_TRACKING_URI, "
                   "else SQLite under the results root.")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep; finished trials are not rerun.")
def sweep_command(sweep_file: Path, address: str | None, storage: str | None, tracking_uri: str | None,
                  resume: bool) -> None:
    """Search an algorithm's hyperparameters (Ray Tune + Optuna + ASHA); every trial goes to MLflow."""
    _quiet_libraries()
    from igmu.platform.sweepfile import load_sweep

    config = load_sweep(sweep_file)  # every mistake in the file surfaces here, before anything runs
    from igmu.platform.sweep import run_sweep

    outcome = run_sweep(config, address=address, storage=storage, tracking_uri=tracking_uri, resume=resume)
    click.echo(_sweep_summary(outcome, config))
    _show_front(outcome, config, storage)


def _show_front(outcome, config, storage: str | None) -> None:
    """Print the Pareto front and log its plot to the parent run (issue: the sweep ends with it)."""
    from igmu.platform.cli_analysis import record_sweep_front
    from igmu.platform.frontier import compute_frontier, front_summary, load_sweep_table, locate_sweep

    click.echo(front_summary(outcome.rows, config.objectives))
    source = locate_sweep(config.name, storage, outcome.tracking_uri)
    try:
        frontier = compute_frontier(load_sweep_table(source), list(config.objectives), False,
                                    label=f"sweep {config.name!r}")
    except UsageError as err:  # e.g. no trial was scored: nothing to plot, the summary said why
        click.echo(f"igmu: note: no Pareto plot: {err}", err=True)
        return
    note = record_sweep_front(source, frontier)
    if note:
        click.echo(f"igmu: note: {note}", err=True)


def _sweep_summary(outcome, config) -> str:
    lines = [f"sweep {outcome.name}: {len(outcome.rows)} trials, "
             f"{sum(r['status'] == 'early_stopped' for r in outcome.rows)} stopped early, "
             f"{sum(r['status'] == 'error' for r in outcome.rows)} failed; results: {outcome.table}"]
    finished = [r for r in outcome.rows if r["status"] == "finished"]
    for objective, mode in config.objectives.items():
        scored = [r for r in finished if r.get(objective) == r.get(objective)]  # drop NaN
        if scored:
            best = (max if mode == "max" else min)(scored, key=lambda r: r[objective])
            params = {k[6:]: v for k, v in best.items() if k.startswith("param_") and v == v}
            lines.append(f"  best {objective}: {best[objective]:.3f}  trial {best['trial_id']} ({best['algorithm']}) {params}")
    lines.append(f"open the MLflow UI: igmu ui --tracking-uri {outcome.tracking_uri}")
    return "\n".join(lines)


@cli.command("results")
@click.argument("sweep")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv", "json"]), default="json", show_default=True)
@click.option("--storage", default=None, help="Results root the sweep wrote to.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (required for parquet); default: stdout.")
def results_command(sweep: str, fmt: str, storage: str | None, out: Path | None) -> None:
    """Export a sweep's results table (one row per trial) as Parquet, CSV or JSON."""
    from igmu.platform.sweep import load_table

    table = load_table(sweep, storage)
    if fmt == "parquet":
        if out is None:
            raise UsageError("--format parquet needs --out FILE")
        table.to_parquet(out, index=False)
        return
    text = table.to_csv(index=False) if fmt == "csv" else table.to_json(orient="records", indent=2) + "\n"
    if out:
        out.write_text(text)
    else:
        click.echo(text, nl=False)


@cli.command("ui")
@click.option("--tracking-uri", default=None, help="Default: the SQLite store under the results root.")
@click.option("--storage", default=None, help="Results root (for the default store).")
@click.option("--port", default=5000, show_default=True, type=int)
def ui_command(tracking_uri: str | None, storage: str | None, port: int) -> None:
    """Open MLflow's UI on the sweep store."""
    import subprocess

    from igmu.platform.sweep import results_root
    from igmu.platform.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(results_root(storage))
    sys.exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port)]))


from igmu.platform.cli_analysis import compare_command, pareto_command  # noqa: E402  (registered below)
from igmu.platform.cli_serve import serve_group  # noqa: E402

cli.add_command(pareto_command)
cli.add_command(compare_command)
cli.add_command(serve_group)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        result = cli.main(args=argv, prog_name="igmu", standalone_mode=False)
    except UsageError as err:
        click.echo(f"igmu: error: {err}", err=True)
        return UsageError.exit_code
    except click.exceptions.UsageError as err:
        click.echo(f"igmu: error: {err.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("igmu: aborted", err=True)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
