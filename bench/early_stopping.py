"""Benchmark: what early stopping saves and what it costs the front.

Usage: python bench/early_stopping.py SWEEP_FILE [--schedulers asha,mo-asha,none] [--seeds 0,1,2]
                                     [--storage ROOT] [--search-only] [--json OUT]

For each scheduler and sampler seed, a copy of the sweep file with `early_stop.scheduler` and
`search.seed` set (and a name saying so) runs through `igmu sweep --quiet`; its results table gives
the trials finished, the Pareto front on the sweep's objectives (validation scores, degenerate
trials left out, as `igmu pareto` does), its hypervolume, the trial-steps the search ran and their
share of what running every trial to the end takes, and the command's wall time. `none` runs every
trial to the end. Hypervolume uses one fixed reference point: 0 for every maximised objective (the
lowest score an aspect can have), so hypervolumes of different runs compare. `--search-only` also
sets `eval.held_out: none` and `eval.defaults: false`, timing the search alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from igmu.analysis.frontier import compute_frontier
from igmu.analysis.pareto import hypervolume
from igmu.errors import UsageError
from igmu.sweep.engine import algorithm_steps
from igmu.sweep.file import load_sweep
from igmu.sweep.results import load_sweep_table, locate_sweep


def variant_file(sweep_file: Path, folder: Path, scheduler: str, seed: int, search_only: bool) -> Path:
    """The sweep file with its scheduler and seed set, beside a copy of the file it layers on."""
    text = yaml.safe_load(sweep_file.read_text())
    if text.get("base"):
        base = sweep_file.parent / text["base"]
        (folder / base.name).write_text(base.read_text())
        text["base"] = base.name
    text["name"] = f"{text['name']}-{scheduler}-seed{seed}"
    text.setdefault("early_stop", {})["scheduler"] = scheduler
    text.setdefault("search", {})["seed"] = seed
    if search_only:
        text.setdefault("eval", {}).update({"held_out": "none", "defaults": False})
    path = folder / f"{text['name']}.yaml"
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return path


def run(path: Path, storage: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "igmu.cli", "sweep", str(path), "--storage", storage, "--quiet"],
                   check=True)
    return time.monotonic() - started


def measure(path: Path, storage: str, wall: float) -> dict:
    config = load_sweep(path)
    table = load_sweep_table(locate_sweep(config.name, storage))
    steps_run = int(table["steps"].fillna(0).sum())
    steps_all = sum(algorithm_steps(config, algorithm) for algorithm in table["algorithm"])
    objectives = dict(config.objectives)
    if "min" in objectives.values():
        raise SystemExit(f"{path}: a minimised objective has no fixed reference point here; valid: maximised only")
    try:
        frontier = compute_frontier(table, objectives)
        points = frontier.scored[list(objectives)].to_numpy(dtype=float)
        front = len(frontier.front)
        volume = hypervolume(points, list(objectives.values()), reference=[0.0] * len(objectives))
    except UsageError:  # no scored trial at all
        front, volume = 0, 0.0
    return {"sweep": config.name, "wall_s": round(wall, 1), "trials": len(table),
            "finished": int((table["status"] == "finished").sum()), "front_size": front,
            "hypervolume": round(volume, 4), "trial_steps": steps_run,
            "trial_steps_share": round(steps_run / steps_all, 3) if steps_all else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file", type=Path)
    parser.add_argument("--schedulers", default="asha,mo-asha,none")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--storage", default="bench-results/early-stopping")
    parser.add_argument("--search-only", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    folder = Path(args.storage) / "sweep-files"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for scheduler in args.schedulers.split(","):
            path = variant_file(args.sweep_file, folder, scheduler, seed, args.search_only)
            rows.append({"scheduler": scheduler, "seed": seed, **measure(path, args.storage, run(path, args.storage))})
            print(json.dumps(rows[-1]), flush=True)
    report = {"file": str(args.sweep_file), "reference_point": "0 for every maximised objective", "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
