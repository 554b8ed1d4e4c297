"""`igmu pareto` and `igmu compare`: read finished sweeps and say which trials and algorithms are worth a look.

Argument parsing only; the analysis lives in `igmu.analysis.frontier`, the plots and the report in
`igmu.analysis.report`. Registered on the `igmu` group in `igmu.cli.main`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from igmu.cli.options import SPLITS, Choice
from igmu.cli.output import emit, note

OBJECTIVES_HELP = ("Comma-separated objectives: forgetting, preservation, quality, alignment, robustness, "
                   "efficiency_seconds, each in the direction the sweep file declared (else aspects are "
                   "maximised, efficiency_seconds minimised). The first two are the plot axes. "
                   "[default: the objectives the sweep files declare; forgetting,preservation for a bare table]")
DEGENERATE_HELP = ("Keep trials whose scorecard is degenerate (most images unrecognisable: blank, noise, blur); "
                   "left out by default, since their forgetting is a broken model's.")


@click.command("pareto")
@click.argument("sweep")
@click.option("--objectives", default=None, help=OBJECTIVES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the front as JSON instead of a table.")
@click.option("--include-stopped", is_flag=True, help="Keep early-stopped trials that have scores (marked).")
@click.option("--include-degenerate", is_flag=True, help=DEGENERATE_HELP + " Marked.")
@click.option("--split", default="validation", show_default=True, type=Choice(SPLITS),
              help="Scores to rank: validation (what the search saw; tags the MLflow runs) or test (the held-out "
                   "re-scoring of the trials the sweep selected).")
@click.option("--storage", default=None, help="Results root; default: $IGMU_RESULTS or ./igmu-results.")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else SQLite under the results root.")
def pareto_command(sweep: str, objectives: str | None, as_json: bool, include_stopped: bool, include_degenerate: bool,
                   split: str,
                   storage: str | None, tracking_uri: str | None) -> None:
    """Pareto front of SWEEP (a sweep name, its MLflow parent run id or a results .parquet file).

    Tags the front's MLflow runs pareto=true and the sweep's other runs pareto=false, and logs the
    plot (PNG and interactive HTML) to the parent run.
    """
    from igmu.analysis.frontier import (
        choose_objectives,
        compute_frontier,
        format_front_table,
        frontier_json,
        left_out_note,
    )
    from igmu.sweep.results import load_sweep_table, locate_sweep

    source = locate_sweep(sweep, storage, tracking_uri)
    chosen = choose_objectives(objectives, [source])
    frontier = compute_frontier(load_sweep_table(source, split), chosen, include_stopped,
                                label=f"sweep {source.label!r}", include_degenerate=include_degenerate)
    emit(frontier_json(frontier), as_json, lambda _: click.echo(format_front_table(frontier, source.label)))
    if frontier.degenerate_left_out:
        note(left_out_note(frontier.degenerate_left_out))
    # The runs' pareto tags and the parent's plots say what the search found: the validation front.
    message = record_sweep_front(source, frontier) if split == "validation" else None
    if message:
        note(message)


def record_sweep_front(source, frontier) -> str | None:
    """Tag the front's MLflow runs and log the Pareto plots to the parent run; a note if skipped."""
    from igmu.analysis.frontier import record_front
    from igmu.analysis.report import write_pareto_plots

    if source.mlflow_note is not None:
        return source.mlflow_note
    with tempfile.TemporaryDirectory(prefix="igmu-pareto-") as folder:
        return record_front(source, frontier, write_pareto_plots(frontier, Path(folder), source.label))


@click.command("compare")
@click.argument("sweeps", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True,
              help="Folder for report.md, report.html, fronts.png and the knee-point grids.")
@click.option("--objectives", default=None, help=OBJECTIVES_HELP)
@click.option("--include-stopped", is_flag=True, help="Keep early-stopped trials that have scores.")
@click.option("--include-degenerate", is_flag=True, help=DEGENERATE_HELP)
@click.option("--storage", default=None, help="Results root; default: $IGMU_RESULTS or ./igmu-results.")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON instead of a table.")
def compare_command(sweeps: tuple[str, ...], out: Path, objectives: str | None, include_stopped: bool,
                    include_degenerate: bool, storage: str | None, as_json: bool) -> None:
    """Leaderboard of the algorithms in one or more SWEEPS, with a Markdown and an HTML report."""
    from igmu.analysis.frontier import (
        choose_objectives,
        combine_tables,
        compare_algorithms,
        degenerate_left_out,
        left_out_note,
        text_table,
    )
    from igmu.analysis.report import leaderboard_table, write_compare_report
    from igmu.sweep.results import distinct_sources, load_sweep_table, locate_sweep

    sources = distinct_sources(locate_sweep(sweep, storage) for sweep in sweeps)
    chosen = choose_objectives(objectives, sources)
    loaded = [(source, load_sweep_table(source)) for source in sources]
    results = compare_algorithms(loaded, chosen, include_stopped, include_degenerate)
    left_out = [] if include_degenerate else degenerate_left_out(combine_tables(loaded), chosen, include_stopped)
    written = {**write_compare_report(results, sources, out), "degenerate_left_out": len(left_out)}

    def table(report):
        from igmu.analysis.standing import TIED, standing_table

        click.echo(text_table(*leaderboard_table(report["leaderboard"])))
        for name, tuned in (("defaults", False), ("tuned", True)):
            if report[name]:
                click.echo(f"\n{name} (held-out test split; {TIED}: within the best's 95% interval)")
                click.echo(text_table(*standing_table(report[name], tuned)))
        click.echo(f"report: {report['markdown']}  {report['html']}")

    emit(written, as_json, table)
    if len(left_out):
        note(left_out_note(len(left_out), left_out["algorithm"].value_counts().to_dict()))
