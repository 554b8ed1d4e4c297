"""`igmu export`: a sweep trial as a model folder (a stock diffusers pipeline for Stable Diffusion).

Argument parsing only; the export lives in `igmu.analysis.export`. Registered in `igmu.cli.main`.
"""

from __future__ import annotations

from pathlib import Path

import click

from igmu.cli.output import emit, quiet_libraries
from igmu.cli.progress import quiet_option


@click.command("export")
@click.argument("sweep")
@click.option("--trial", default=None, help="The trial to export (a trial id of the sweep's table).")
@click.option("--knee", is_flag=True, help="Export the knee of the sweep's Pareto front on its declared objectives.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New (or empty) folder for the model and igmu_export.json.")
@click.option("--storage", default=None, help="Results root; default: $IGMU_RESULTS or ./igmu-results.")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else SQLite under the results root.")
@click.option("--json", "as_json", is_flag=True, help="Print what igmu_export.json records as JSON.")
@quiet_option
def export_command(sweep: str, trial: str | None, knee: bool, out: Path, storage: str | None,
                   tracking_uri: str | None, as_json: bool) -> None:
    """Rebuild one trial of SWEEP (a sweep name, its MLflow parent run id or a results .parquet file)
    from its kept weights and save it to --out."""
    quiet_libraries()
    from igmu.analysis.export import export_trial

    record = export_trial(sweep, out, trial=trial, knee=knee, storage=storage, tracking_uri=tracking_uri)
    emit(record, as_json, lambda r: click.echo(f"exported trial {r['trial_id']} ({r['algorithm']}) of sweep "
                                               f"{r['sweep']} to {out}"))
