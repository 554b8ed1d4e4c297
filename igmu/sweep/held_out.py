"""What a sweep does once its search is over: the selected trials are re-scored once on the held-out
test split, and each algorithm runs once at its published defaults and is scored on the same split.

Trials only ever see the validation split (interim and final scorecards alike), so their scores are
optimistic by construction: the search picked them for those very prompts and seeds. The test
scores of the front, beside the defaults' test scores, say how much of that standing holds up.

Each re-scoring runs as a Ray task with a trial's resources, and its scorecard is kept on disk, so a
resumed sweep reuses what an earlier run of this stage already measured instead of scoring twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from igmu.metrics.base import ASPECTS
from igmu.sweep.results import (
    CHANGED_FILE,
    DEFAULTS_FILE,
    DEGENERATE,
    EFFICIENCY_OBJECTIVE,
    TEST_PREFIX,
    UNRECOGNISABLE_SHARE,
    WEIGHTS_DIR,
    WEIGHTS_MANIFEST,
    interval_keys,
    param_columns,
    write_table,
)

TEST_SCORECARD = "test_scorecard.json"
DEFAULTS_DIR = "defaults"
# The held-out stage's own image cache: the trials' cache folder then provably holds validation images only.
TEST_IMAGES_DIR = "images-test"
TEST_SPLIT = "test"


def test_settings(settings: Mapping) -> dict:
    """A trial's settings, evaluating the test split from the held-out stage's own image cache."""
    sweep_dir = Path(settings["out_dir"]).parent
    return {**settings, "eval_settings": {**settings.get("eval_settings", {}), "split": TEST_SPLIT},
            "cache_dir": str(sweep_dir / TEST_IMAGES_DIR)}


def score_trial_on_test(settings: Mapping, algorithm: str, weights: str) -> dict:
    """The test-split scorecard of a finished trial: the sweep's model with the trial's changed tensors."""
    from safetensors.torch import load_file

    from igmu.run import apply_trial
    from igmu.sweep.trainable import evaluation_model

    generator, score = evaluation_model(settings, algorithm)
    apply_trial(generator, load_file(weights), json.loads((Path(weights).parent / WEIGHTS_MANIFEST).read_text()))
    return score(generator)


def score_defaults_on_test(settings: Mapping, algorithm: str) -> dict:
    """One run of `algorithm` at its published defaults (nothing from the sweep file), scored on the test split."""
    from igmu.run import build_unlearner, unlearn
    from igmu.sweep.trainable import evaluation_model

    generator, score = evaluation_model(settings, algorithm)
    evaluation = settings.get("eval_settings", {})
    # Only tests and smoke runs shrink the defaults runs (like their evaluation budgets).
    overrides = settings.get("defaults_overrides", {}).get(algorithm, {})
    unlearner = build_unlearner(algorithm, generator, settings["target"], overrides, seed=settings["seed"],
                                category=evaluation.get("category"), anchor=settings.get("anchor"),
                                prompts=evaluation.get("prompts"))
    efficiency, _ = unlearn(unlearner)
    card = score(generator)
    return {**card, "algorithm": algorithm, "params": dict(vars(unlearner.params)),
            "efficiency": {"efficiency_seconds": efficiency["seconds"],
                           "efficiency_peak_memory_mb": efficiency["peak_memory_mb"]}}


def run_held_out(rows: list[dict], selected: set, settings: Mapping, algorithms: list[str], resources: Mapping,
                 defaults: bool) -> dict[str, dict]:
    """Re-score `selected` trials on the test split (filling their test_* columns in `rows`) and, with
    `defaults`, run every algorithm once at its defaults. Returns the defaults' scorecards by algorithm."""
    settings = test_settings(settings)
    trials_dir = Path(settings["out_dir"])
    defaults_dir = trials_dir.parent / DEFAULTS_DIR
    jobs = {}
    for row in (row for row in rows if row["trial_id"] in selected):  # kept_trials picks finished ones only
        folder = trials_dir / str(row["trial_id"])
        weights = folder / WEIGHTS_DIR / CHANGED_FILE
        if weights.is_file() or (folder / TEST_SCORECARD).is_file():
            jobs[("trial", row["trial_id"])] = (folder / TEST_SCORECARD, score_trial_on_test,
                                                (settings, row["algorithm"], str(weights)))
    for algorithm in algorithms if defaults else ():
        jobs[("defaults", algorithm)] = (defaults_dir / algorithm / "scorecard.json", score_defaults_on_test,
                                         (settings, algorithm))
    cards = run_jobs(jobs, resources)
    for row in rows:
        card = cards.get(("trial", row["trial_id"]))
        if card:
            row.update(test_columns(card))
    return {name: card for (kind, name), card in cards.items() if kind == "defaults"}


def run_jobs(jobs: dict, resources: Mapping) -> dict:
    """Each job's scorecard: read back from its file when an earlier run wrote it, else computed in a
    Ray task with a trial's resources and written there."""
    import ray

    cards, pending = {}, {}
    for key, (path, fn, args) in jobs.items():
        if path.is_file():
            cards[key] = json.loads(path.read_text())
        else:
            task = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))(fn)
            pending[key] = (path, task.remote(*args))
    for key, (path, ref) in pending.items():
        cards[key] = ray.get(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cards[key], indent=2, default=str))
    return cards


def test_columns(card: Mapping) -> dict:
    """A test scorecard's aspect scores with their 95% intervals, and its degenerate flag with the
    unrecognisable share, as results-table columns."""
    aspects = card.get("aspects", {})
    columns = {}
    for aspect in ASPECTS:
        result = aspects.get(aspect, {})
        interval = result.get("interval") or (math.nan, math.nan)
        columns[TEST_PREFIX + aspect] = float(result["score"]) if "score" in result else math.nan
        columns.update({TEST_PREFIX + key: float(end) for key, end in zip(interval_keys(aspect), interval)})
    share = card.get(UNRECOGNISABLE_SHARE)
    columns[TEST_PREFIX + DEGENERATE] = bool(card.get(DEGENERATE))
    columns[TEST_PREFIX + UNRECOGNISABLE_SHARE] = math.nan if share is None else float(share)
    return columns


def defaults_rows(cards: Mapping[str, dict], run_ids: Mapping[str, str] | None = None) -> list[dict]:
    """One row per algorithm at its defaults: its parameters, test scores and seconds."""
    rows = []
    for algorithm, card in sorted(cards.items()):
        rows.append({"algorithm": algorithm, **param_columns(card.get("params", {})),
                     **test_columns(card),
                     EFFICIENCY_OBJECTIVE: card.get("efficiency", {}).get(EFFICIENCY_OBJECTIVE, math.nan),
                     "mlflow_run_id": (run_ids or {}).get(algorithm)})
    return rows


def write_defaults(cards: Mapping[str, dict], sweep_dir: Path, run_ids: Mapping[str, str] | None = None) -> Path | None:
    return write_table(defaults_rows(cards, run_ids), sweep_dir / DEFAULTS_FILE) if cards else None
