"""`igmu eval --from-run RUN_ID`: score a logged trial again, with exactly the settings its scorecard
recorded (its `reproduce` block: split, seed, budget, prompt settings, sampler, judges, precision,
device, threads), and say whether every aspect came out the same."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from igmu.errors import UsageError
from igmu.sweep.results import CHANGED_FILE, WEIGHTS_DIR, WEIGHTS_MANIFEST, resolve_tracking_uri, results_root

# The scorecards a trial run logs, by the split they scored: the held-out stage's, then the trial's own.
SCORECARDS = {"test": "test_scorecard.json", "validation": "scorecard.json"}


def rescore_run(run_id: str, split: str | None = None, storage: str | None = None,
                tracking_uri: str | None = None) -> dict:
    """The run's model scored again as its recorded scorecard was; returns both scorecards and, per
    aspect, whether the score is identical."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri, None, results_root(storage))
    check_store_exists(uri, run_id)
    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise UsageError(f"--from-run {run_id!r}: no such MLflow run at {client.tracking_uri}; valid: the run "
                         f"id of a finished sweep trial (igmu results shows them)") from None
    with tempfile.TemporaryDirectory(prefix="igmu-rescore-") as scratch:
        recorded = recorded_scorecard(client, run_id, split, Path(scratch))
        generator = rebuilt_model(client, run_id, Path(scratch), recorded["reproduce"])
        card = score_as_recorded(generator, recorded["reproduce"])
    return {"run_id": run_id, "split": recorded["reproduce"]["split"], "recorded": recorded, "rescored": card,
            "identical": same_scores(recorded, card)}


def check_store_exists(uri: str, run_id: str) -> None:
    """A SQLite store that is not there holds no run; opening it would create an empty one."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
        raise UsageError(f"--from-run {run_id!r}: no MLflow store at {uri}; valid: the --storage or --tracking-uri "
                         f"of the sweep that made the run")


def recorded_scorecard(client, run_id: str, split: str | None, scratch: Path) -> dict:
    names = [SCORECARDS[split]] if split else list(SCORECARDS.values())
    logged = {item.path for item in client.list_artifacts(run_id)}
    for name in names:
        if name in logged:
            card = json.loads(Path(client.download_artifacts(run_id, name, str(scratch))).read_text())
            if "reproduce" not in card:
                raise UsageError(f"run {run_id}'s {name} has no reproduce block (it was scored before igmu "
                                 f"recorded one); valid: a run of a sweep made since")
            return card
    raise UsageError(f"run {run_id} logged no {' or '.join(names)}; valid: a finished trial's run"
                     + (" re-scored on the test split (on the sweep's front)" if split == "test" else ""))


def rebuilt_model(client, run_id: str, scratch: Path, record: dict):
    from igmu.analysis.export import rebuild

    if not any(item.path == f"{WEIGHTS_DIR}/{CHANGED_FILE}" for item in client.list_artifacts(run_id, WEIGHTS_DIR)):
        raise UsageError(f"run {run_id} kept no weights (tracking.keep_weights did not keep this trial's); "
                         f"valid: a run whose weights the sweep kept")
    folder = Path(client.download_artifacts(run_id, WEIGHTS_DIR, str(scratch)))
    return rebuild(json.loads((folder / WEIGHTS_MANIFEST).read_text()), folder / CHANGED_FILE,
                   device=record["device"], precision=record["settings"].get("precision", "fp32"))


def score_as_recorded(generator, record: dict) -> dict:
    """The scorecard of `generator` built from a `reproduce` block alone."""
    import torch

    from igmu.metrics.context import Budget, EvalSettings
    from igmu.metrics.scorecard import build_context, scorecard

    torch.set_num_threads(int(record["threads"]))
    generator.train_mode(False)
    ctx = build_context(generator, record["target"], Budget(**record["budget"]), seed=int(record["seed"]),
                        settings=EvalSettings(**record["settings"]))
    return scorecard(ctx)


def same_scores(recorded: dict, rescored: dict) -> dict[str, bool]:
    """Per aspect, whether the two scores are exactly equal (NaN equals NaN: both unmeasured)."""
    out = {}
    for aspect, result in recorded["aspects"].items():
        old, new = result["score"], rescored["aspects"].get(aspect, {}).get("score")
        out[aspect] = new is not None and (old == new or (math.isnan(old) and math.isnan(new)))
    return out
