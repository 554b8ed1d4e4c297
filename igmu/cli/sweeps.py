"""`igmu sweep`, `igmu results` and `igmu ui`: run a sweep file, export its table, open MLflow."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from igmu.cli.options import Choice
from igmu.cli.output import note, quiet_libraries
from igmu.cli.progress import end_progress, quiet_option
from igmu.errors import UsageError
from igmu.sweep.ui import DEFAULT_UI_PORT, UI_HOST, experiment_url, is_tracking_server, ui_server

# Experiments listed when a name is not found.
SEARCH_LIMIT = 100


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--address", default=None, help="Join a Ray cluster ('auto' or ray://host:port); default: a local Ray.")
@click.option("--storage", default=None, help="Results root (a path or s3:// URI); default: $IGMU_RESULTS or ./igmu-results.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI; default: the sweep file's tracking.uri, else $MLFLOW_TRACKING_URI, "
                   "else SQLite under the results root.")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep; finished trials are not rerun.")
@quiet_option
def sweep_command(sweep_file: Path, address: str | None, storage: str | None, tracking_uri: str | None,
                  resume: bool, quiet: bool) -> None:
    """Search an algorithm's hyperparameters (Ray Tune + Optuna + ASHA); every trial goes to MLflow."""
    quiet_libraries()
    from igmu.sweep.file import load_sweep

    config = load_sweep(sweep_file)  # every mistake in the file surfaces here, before anything runs
    from igmu.sweep.engine import run_sweep

    # --quiet silences Ray Tune's trial tables too.
    outcome = run_sweep(config, address=address, storage=storage, tracking_uri=tracking_uri, resume=resume,
                        verbose=0 if quiet else 1)
    end_progress()
    click.echo(_sweep_summary(outcome, config))
    _show_front(outcome, config, storage)


def _show_front(outcome, config, storage: str | None) -> None:
    """Print the Pareto front on the sweep's own objectives; give the parent run the sweep's summary
    metrics and the front's plot, so the parent run alone says how the sweep went."""
    from igmu.analysis.frontier import compute_frontier, front_summary, record_summary, summary_metrics
    from igmu.cli.analysis import record_sweep_front
    from igmu.sweep.results import load_sweep_table, locate_sweep

    click.echo(front_summary(outcome.rows, config.objectives))
    source = locate_sweep(config.name, storage, outcome.tracking_uri)
    table = load_sweep_table(source)
    try:
        frontier = compute_frontier(table, config.objectives, False, label=f"sweep {config.name!r}")
    except UsageError as err:  # e.g. no trial was scored: nothing to plot, the summary said why
        frontier = None
        note(f"no Pareto plot: {err}")
    messages = [record_summary(source, summary_metrics(table, frontier)),
                record_sweep_front(source, frontier) if frontier is not None else None]
    for message in dict.fromkeys(m for m in messages if m):  # the same skip reason once
        note(message)


def _sweep_summary(outcome, config) -> str:
    from igmu.sweep.results import EARLY_STOPPED, ERROR, FINISHED, row_params, split_column

    lines = [f"sweep {outcome.name}: {len(outcome.rows)} trials, "
             f"{sum(r['status'] == EARLY_STOPPED for r in outcome.rows)} stopped early, "
             f"{sum(r['status'] == ERROR for r in outcome.rows)} failed; results: {outcome.table}"]
    finished = [r for r in outcome.rows if r["status"] == FINISHED]
    for objective, mode in config.objectives.items():
        column = split_column(objective, "validation")
        scored = [r for r in finished if r.get(column) == r.get(column)]  # drop NaN
        if scored:
            best = (max if mode == "max" else min)(scored, key=lambda r: r[column])
            lines.append(f"  best {objective}: {best[column]:.3f}  trial {best['trial_id']} ({best['algorithm']}) "
                         f"{row_params(best)}")
    lines += _held_out_lines(finished, config)
    lines.append(_ui_hint(outcome, config))
    return "\n".join(lines)


def _held_out_lines(finished: list[dict], config) -> list[str]:
    """Validation against held-out test scores of the re-scored trials, on the sweep's objectives."""
    from igmu.sweep.results import TEST_PREFIX, split_column

    aspects = [name for name in config.objectives if split_column(name, "test") != name]
    rescored = [r for r in finished if any(r.get(TEST_PREFIX + a) == r.get(TEST_PREFIX + a) for a in aspects)]
    if not rescored:
        return []
    lines = [f"  held-out test split, {len(rescored)} re-scored trial(s) (validation -> test):"]
    for row in rescored:
        pairs = ", ".join(f"{a} {row[split_column(a, 'validation')]:.3f} -> {row[TEST_PREFIX + a]:.3f}"
                          for a in aspects)
        lines.append(f"    trial {row['trial_id']}: {pairs}")
    return lines


def _ui_hint(outcome, config) -> str:
    """Where to see the sweep: its page on a tracking server, else the `igmu ui` command and the page it serves."""
    import shlex

    url = experiment_url(ui_server(outcome.tracking_uri), outcome.experiment_id)
    if is_tracking_server(outcome.tracking_uri):
        return f"MLflow: {url}"
    experiment = config.tracking.experiment or config.name
    return (f"open the MLflow UI: igmu ui --tracking-uri {shlex.quote(outcome.tracking_uri)} "
            f"{shlex.quote(experiment)}  (then {url})")


@click.command("results")
@click.argument("sweep")
@click.option("--format", "fmt", type=Choice(["parquet", "csv", "json"]), default="json", show_default=True)
@click.option("--storage", default=None, help="Results root the sweep wrote to.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (required for parquet); default: stdout.")
def results_command(sweep: str, fmt: str, storage: str | None, out: Path | None) -> None:
    """Export a sweep's results table (one row per trial) as Parquet, CSV or JSON."""
    from igmu.sweep.results import load_sweep_table, locate_sweep

    table = load_sweep_table(locate_sweep(sweep, storage), split=None)  # both splits' columns, as stored
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


@click.command("ui")
@click.argument("experiment", required=False)
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else SQLite under the results root.")
@click.option("--storage", default=None, help="Results root (for the default store).")
@click.option("--port", default=DEFAULT_UI_PORT, show_default=True, type=int)
def ui_command(experiment: str | None, tracking_uri: str | None, storage: str | None, port: int) -> None:
    """Open MLflow's UI on the sweep store, at EXPERIMENT's runs (a sweep's experiment name; default:
    the newest experiment). A tracking server already serves its UI: its address is printed."""
    import subprocess

    uri, url = ui_target(tracking_uri, storage, experiment, port)
    click.echo(f"MLflow UI: {url}")
    if is_tracking_server(uri):  # it serves its own UI
        return
    sys.exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", UI_HOST, "--port", str(port)]))


def ui_target(tracking_uri: str | None, storage: str | None, experiment: str | None,
              port: int = DEFAULT_UI_PORT) -> tuple[str, str]:
    """(tracking URI, page to open): the store every igmu command resolves (--tracking-uri, else
    $MLFLOW_TRACKING_URI, else the results root's SQLite) and the experiment's runs in it."""
    from igmu.sweep.results import resolve_tracking_uri, results_root

    uri = resolve_tracking_uri(tracking_uri, None, results_root(storage))
    return uri, experiment_url(ui_server(uri, port), _experiment_id(uri, experiment))


def _experiment_id(uri: str, name: str | None) -> str | None:
    """The named experiment's id, or the newest one's (None for an empty store)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if name:
        found = client.get_experiment_by_name(name)
        if found is None:
            known = sorted(e.name for e in client.search_experiments(max_results=SEARCH_LIMIT))
            raise UsageError(f"unknown experiment {name!r} in {uri}; valid: {', '.join(known) or 'none'}")
        return found.experiment_id
    newest = client.search_experiments(max_results=1, order_by=["creation_time DESC"])
    return newest[0].experiment_id if newest else None
