"""Benchmark: where a sweep's trials spend their time.

Usage: python bench/sweep_profile.py SWEEP_FILE [--storage ROOT] [--existing] [--json OUT]

Runs `igmu sweep SWEEP_FILE --quiet` (or, with --existing, reads the finished sweep of that file's
name), then reads every trial's MLflow run: the seconds its worker spent per phase (setup, unlearning
steps, interim and final evaluation split into image generation and judging, checkpoints, artifacts)
and the span the driver saw it hold its slot. Orchestration is the span minus the worker's own work
(Ray starting the worker, Tune taking reports and checkpoints, MLflow logging, stopping it). Shares
are of the summed trial spans. Slot idle time is what the search left unused of its concurrent
slots (waiting for a suggestion, the tail where fewer trials remain than slots).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from igmu.sweep import profile
from igmu.sweep.file import load_sweep
from igmu.sweep.results import locate_sweep
from igmu.sweep.tracking import PARENT_TAG, ROLE_TAG, TRIAL_TAG

# Shares of the trials' summed span, in the order a trial goes through them.
GROUPS = {
    "setup": (profile.SETUP,),
    "steps": (profile.STEPS,),
    "interim_generation": (profile.INTERIM_GENERATION,),
    "interim_judging": (profile.INTERIM_JUDGING,),
    "final_generation": (profile.FINAL_GENERATION,),
    "final_judging": (profile.FINAL_JUDGING,),
    "checkpoint_and_artifacts": (profile.CHECKPOINT, profile.ARTIFACTS),
}


def run_sweep(sweep_file: str, storage: str | None) -> float:
    started = time.monotonic()
    where = ["--storage", storage] if storage else []
    subprocess.run([sys.executable, "-m", "igmu.cli", "sweep", sweep_file, *where, "--quiet"], check=True)
    return time.monotonic() - started


def trial_runs(sweep_name: str, storage: str | None):
    from mlflow.tracking import MlflowClient

    source = locate_sweep(sweep_name, storage)
    client = MlflowClient(source.tracking_uri)
    parent = client.get_run(source.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{source.parent_run_id}'",
                              max_results=10_000)
    return parent, [run for run in runs if TRIAL_TAG in run.data.tags and ROLE_TAG not in run.data.tags]


def trial_profile(run) -> dict:
    metrics = run.data.metrics
    seconds = {phase: float(metrics.get(profile.key(phase), 0.0)) for phase in profile.WORKER_PHASES}
    return {"trial_id": run.data.tags[TRIAL_TAG], "algorithm": run.data.tags.get("algorithm"),
            "status": run.data.tags.get("status"), "wall": metrics.get(profile.key(profile.WALL)),
            "orchestration": metrics.get(profile.key(profile.ORCHESTRATION)), **seconds}


def totals(trials: list[dict]) -> dict:
    measured = [trial for trial in trials if trial["wall"] is not None]
    wall = sum(trial["wall"] for trial in measured)
    seconds = {name: sum(trial[phase] for trial in measured for phase in phases) for name, phases in GROUPS.items()}
    seconds["orchestration"] = sum(trial["orchestration"] for trial in measured)
    seconds["report_handoff"] = sum(trial[profile.REPORT] for trial in measured)
    interim = seconds["interim_generation"] + seconds["interim_judging"]
    return {"trials": len(trials), "trials_with_span": len(measured), "trial_wall_s": round(wall, 2),
            "seconds": {name: round(value, 2) for name, value in seconds.items()},
            "share": {name: _share(value, wall) for name, value in {**seconds, "interim_evaluation": interim}.items()}}


def report(sweep_file: str, storage: str | None, existing: bool) -> dict:
    config = load_sweep(sweep_file)
    command_wall = None if existing else run_sweep(sweep_file, storage)
    parent, runs = trial_runs(config.name, storage)
    trials = sorted((trial_profile(run) for run in runs), key=lambda trial: trial["trial_id"])
    summary = totals(trials)
    search = parent.data.metrics.get(profile.key(profile.SEARCH))
    slots = config.search.max_concurrent
    slot_seconds = slots * search if search else 0.0
    sweep = {"command_wall_s": _round(command_wall), "search_wall_s": _round(search),
             "held_out_wall_s": _round(parent.data.metrics.get(profile.key(profile.HELD_OUT))), "slots": slots,
             "slot_idle_share": _share(slot_seconds - summary["trial_wall_s"], slot_seconds)}
    return {"sweep": config.name, "file": sweep_file, "sweep_times": sweep, "total": summary, "trials": trials}


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file")
    parser.add_argument("--storage", default=None, help="results root (default: igmu's)")
    parser.add_argument("--existing", action="store_true", help="profile the finished sweep, do not run it")
    parser.add_argument("--json", default=None, help="write the report here too")
    args = parser.parse_args(argv)
    result = report(args.sweep_file, args.storage, args.existing)
    text = json.dumps(result, indent=2)
    print(json.dumps({"sweep_times": result["sweep_times"], "total": result["total"]}, indent=2))
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
