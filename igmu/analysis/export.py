"""`igmu export`: one trial of a finished sweep as a model folder that other tools load.

A sweep keeps only the tensors each trial changed (`tracking.keep_weights`); exporting loads the
sweep's model with igmu's loader, puts the trial's changed tensors back and saves it with
`Generator.save`, so a Stable Diffusion trial becomes a stock diffusers `StableDiffusionPipeline`
folder (unless its method's effect lies outside the weights) and a world trial an igmu folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from igmu import progress
from igmu.analysis.frontier import choose_objectives, compute_frontier, trial_params, trial_scores
from igmu.errors import UsageError
from igmu.sweep.results import (
    CHANGED_FILE,
    DEFAULT_OBJECTIVES,
    WEIGHTS_DIR,
    WEIGHTS_MANIFEST,
    SweepSource,
    load_sweep_table,
    locate_sweep,
)

EXPORT_FILE = "igmu_export.json"
# How many trial ids an unknown-trial error lists.
SHOWN_TRIALS = 5
# What the export's progress line names, in order.
STAGES = ("fetching the weights", "rebuilding the model", "saving")


def export_trial(sweep: str, out: Path, trial: str | None = None, knee: bool = False,
                 storage: str | None = None, tracking_uri: str | None = None) -> dict:
    """Export SWEEP's trial `trial` (or its knee) to `out`; returns what igmu_export.json records."""
    check_choice(trial, knee)
    check_out(out)
    source = locate_sweep(sweep, storage, tracking_uri)
    table = load_sweep_table(source)
    row = knee_row(source, table) if knee else trial_row(source, table, trial)
    with progress.task(_stage(0), total=len(STAGES)) as shown:
        with tempfile.TemporaryDirectory(prefix="igmu-export-") as scratch:
            weights = fetch_weights(source, row, Path(scratch))
            shown.update(completed=1, description=_stage(1))
            manifest = json.loads((weights / WEIGHTS_MANIFEST).read_text())
            check_exportable(manifest["algorithm"])
            generator = rebuild(manifest, weights / CHANGED_FILE)
        shown.update(completed=2, description=_stage(2))
        from igmu.algorithms.base import get_algorithm

        generator.save(out, stock_weights=get_algorithm(manifest["algorithm"]).stock_weights)
        shown.update(completed=len(STAGES), description="export: saved")
    record = export_record(source, row, manifest)
    (out / EXPORT_FILE).write_text(json.dumps(record, indent=2, default=str))
    return record


def _stage(index: int) -> str:
    return f"export: {STAGES[index]}"


def check_exportable(algorithm: str) -> None:
    """Refuse an algorithm whose result no model folder can hold (`Unlearner.unsaved_reason`)."""
    from igmu.algorithms.base import get_algorithm

    reason = get_algorithm(algorithm).unsaved_reason
    if reason:
        raise UsageError(f"cannot export a {algorithm} trial: {reason}")


def check_choice(trial: str | None, knee: bool) -> None:
    if (trial is None) == (not knee):
        raise UsageError("give exactly one of --trial ID and --knee; valid: --trial ID (a trial of the sweep) "
                         "or --knee (the knee of its Pareto front)")


def check_out(out: Path) -> None:
    """Refuse to mix an export into other files (a folder some tool would then half-load)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {str(out)!r} exists and is not an empty folder; valid: a new or empty folder")


def knee_row(source: SweepSource, table: pd.DataFrame) -> pd.Series:
    """The knee of the sweep's front on its declared objectives, as `igmu pareto` finds it."""
    objectives = choose_objectives(list(source.objectives or DEFAULT_OBJECTIVES), [source])
    frontier = compute_frontier(table, objectives, label=f"sweep {source.label!r}")
    return frontier.scored.iloc[frontier.knee]


def trial_row(source: SweepSource, table: pd.DataFrame, trial: str) -> pd.Series:
    matches = table[table["trial_id"].astype(str) == str(trial)]
    if matches.empty:
        known = [str(t) for t in table["trial_id"]]
        shown = ", ".join(known[:SHOWN_TRIALS]) + (", ..." if len(known) > SHOWN_TRIALS else "")
        raise UsageError(f"unknown trial {trial!r} in sweep {source.label!r}; valid: {shown or 'no trials'}")
    return matches.iloc[0]


def fetch_weights(source: SweepSource, row: pd.Series, scratch: Path) -> Path:
    """The trial's weights folder: downloaded from its MLflow run, else its trial folder on disk."""
    downloaded = download_weights(source, row.get("mlflow_run_id"), scratch)
    if downloaded is not None:
        return downloaded
    local = source.weights_dir(row["trial_id"])
    if (local / CHANGED_FILE).is_file() and (local / WEIGHTS_MANIFEST).is_file():
        return local
    raise UsageError(f"trial {row['trial_id']!r} of sweep {source.label!r} ({row['status']}) kept no weights: "
                     "the sweep's retention policy (tracking.keep_weights, default front) did not keep them, "
                     "and early-stopped trials have none; to keep every finished trial's, set "
                     "tracking.keep_weights: all in the sweep file and run it again")


def download_weights(source: SweepSource, run_id, scratch: Path) -> Path | None:
    """The weights artifacts of the trial's run, or None when the store or the run has none."""
    if source.mlflow_note is not None or not isinstance(run_id, str):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(source.tracking_uri)
    try:
        if not any(item.path == f"{WEIGHTS_DIR}/{CHANGED_FILE}" for item in client.list_artifacts(run_id, WEIGHTS_DIR)):
            return None
        return Path(client.download_artifacts(run_id, WEIGHTS_DIR, str(scratch)))
    except (MlflowException, OSError):
        return None


def rebuild(manifest: dict, changed_file: Path, device: str = "cpu", precision: str = "fp32"):
    """The sweep's model, loaded as the kinds the trial's algorithm edits, with the trial's changes."""
    from safetensors.torch import load_file

    from igmu.run import apply_trial, load_model_for

    generator = load_model_for(manifest["algorithm"], manifest["model"], device=device, precision=precision)
    apply_trial(generator, load_file(str(changed_file)), manifest)
    return generator


def export_record(source: SweepSource, row: pd.Series, manifest: dict) -> dict:
    run_id = row.get("mlflow_run_id")
    return {"sweep": source.label, "trial_id": str(row["trial_id"]),
            "mlflow_run_id": run_id if isinstance(run_id, str) else None,
            "algorithm": manifest["algorithm"], "model": manifest["model"], "target": manifest["target"],
            "seed": manifest.get("seed"), "params": trial_params(row) or manifest.get("params", {}),
            "scores": trial_scores(row), "stock_weights": manifest.get("stock_weights", True)}


def exported_from(folder: str) -> str | None:
    """The model an igmu export was made from (its original, for evaluation), when `folder` is one."""
    record = Path(folder) / EXPORT_FILE
    return json.loads(record.read_text()).get("model") if record.is_file() else None
