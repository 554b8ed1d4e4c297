"""End-to-end sweeps with a real local Ray, real Optuna and a real MLflow store, at a tiny budget."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from sweep_helpers import bench_module, children

from igmu.metrics.base import ASPECTS
from igmu.sweep.engine import run_sweep
from igmu.sweep.file import load_sweep
from igmu.sweep.tracking import PARENT_TAG, TRIAL_TAG
from igmu.world.concepts import get_concept

# Real sweeps on Ray, or `igmu sweep` in a subprocess that loads torch.
pytestmark = pytest.mark.slow

TINY_BUDGETS = {
    "small": {"forget": 6, "retain": 8, "related": 4, "paraphrase": 0},
    "full": {"forget": 6, "retain": 8, "related": 4, "paraphrase": 4, "attack_prompts": 2, "attack_steps": 2},
}

# The held-out stage's defaults run, shrunk like the budgets.
TINY_DEFAULTS = {"esd": {"steps": 2, "ddim_steps": 4, "batch_size": 2}}


def write_sweep(folder, name, samples=4, steps=6, defaults=False, held_out="none"):
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        model: world
        target: hazard
        algorithm: esd
        params:
          lr: {{loguniform: [1.0e-4, 3.0e-2]}}
          steps: {steps}
          ddim_steps: 4
          batch_size: 2
        search: {{sampler: tpe, num_samples: {samples}, max_concurrent: 2, seed: 0}}
        objectives: {{forgetting: max, preservation: max}}
        early_stop: {{scheduler: asha, grace_period: 1, reduction_factor: 2, eval_every: 2}}
        resources: {{cpu: 1}}
        eval: {{defaults: {str(defaults).lower()}, held_out: {held_out}}}
    """))
    return path


@pytest.fixture(scope="module")
def finished_sweep(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    config = load_sweep(write_sweep(folder, "esd-tiny", samples=6, defaults=True, held_out="front"))
    outcome = run_sweep(config, storage=str(folder / "results"), verbose=0,
                        extra_settings={"budget_sizes": TINY_BUDGETS, "defaults_overrides": TINY_DEFAULTS,
                                        "fail_once_marker": str(folder / "failed-once")})
    return outcome, folder


def test_every_trial_is_a_nested_mlflow_run_with_its_scores(finished_sweep):
    from mlflow.tracking import MlflowClient

    outcome, _ = finished_sweep
    client = MlflowClient(outcome.tracking_uri)
    runs = children(client, outcome)
    assert len(runs) == 6
    assert len({r.data.tags[TRIAL_TAG] for r in runs}) == 6
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["igmu.sweep"] == "esd-tiny"
    for run in runs:
        assert run.data.tags["algorithm"] == "esd" and run.data.tags["target"] == "hazard"
        assert float(run.data.params["lr"]) > 0 and run.data.params["train_method"] == "xattn"
        assert run.data.params["reference"] == "anchor"  # ESD's default for a sensitive target
        assert "interim_forget_retain_hmean" in run.data.metrics
        if run.data.tags["status"] == "finished":
            assert {f"val_{a}" for a in ASPECTS} <= set(run.data.metrics)
            assert "efficiency_seconds" in run.data.metrics
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"grid.png", "scorecard.json"} <= artifacts
        else:
            assert run.data.tags["status"] == "early_stopped" and run.data.tags["early_stopped"] == "true"
            assert not {f"val_{a}" for a in ASPECTS} & set(run.data.metrics)


def test_the_parquet_table_matches_mlflow(finished_sweep):
    from mlflow.tracking import MlflowClient

    outcome, _ = finished_sweep
    table = pd.read_parquet(outcome.table)
    runs = {r.info.run_id: r for r in children(MlflowClient(outcome.tracking_uri), outcome)}
    assert len(table) == 6 and set(table.mlflow_run_id) == set(runs)
    for row in table.itertuples():
        run = runs[row.mlflow_run_id]
        assert run.data.tags["status"] == row.status
        assert row.param_lr == pytest.approx(float(run.data.params["lr"]))
        assert row.param_reference == run.data.params["reference"] == "anchor"
        assert 0.0 <= row.val_unrecognisable_share <= 1.0  # every trial judged recognisability
        if row.status == "finished":
            for aspect in ASPECTS:
                assert getattr(row, f"val_{aspect}") == pytest.approx(run.data.metrics[f"val_{aspect}"])
            assert row.val_degenerate == bool(run.data.metrics["val_degenerate"])
            assert row.val_unrecognisable_share == pytest.approx(run.data.metrics["val_unrecognisable_share"])
    assert (table.status != "error").all()


def test_a_trial_that_raises_once_is_retried_from_its_checkpoint(finished_sweep):
    outcome, folder = finished_sweep
    assert (folder / "failed-once").read_text() == "failed once"
    assert len(outcome.rows) == 6 and all(r["status"] in ("finished", "early_stopped") for r in outcome.rows)


def test_asha_stopped_at_least_one_trial(finished_sweep):
    outcome, _ = finished_sweep
    statuses = [r["status"] for r in outcome.rows]
    assert "early_stopped" in statuses and "finished" in statuses


def test_bad_sweep_file_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: world\ntarget: hazard\nalgorithm: esd\nparams: {lr: 9.0}\n")
    env = {**os.environ, "IGMU_RESULTS": str(tmp_path / "results")}
    result = subprocess.run([sys.executable, "-m", "igmu.cli", "sweep", str(bad)], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "params.lr" in result.stderr and not (tmp_path / "results").exists()


def test_resume_after_stopping_the_driver_with_ctrl_c(tmp_path):
    """Ctrl-C once a trial has finished: the sweep stops with one line and exit code 130, scores nothing
    on the held-out split, and --resume completes it without duplicates. (Killing the driver outright
    is tests/test_cluster.py's case.) A resume with another sweep file is refused in one line and
    loses nothing."""
    sweep = write_sweep(tmp_path, "resume-tiny", samples=3, steps=4)
    env = {**os.environ, "IGMU_RESULTS": str(tmp_path / "results"), "IGMU_BUDGET_SIZES": json.dumps(TINY_BUDGETS)}
    command = [sys.executable, "-m", "igmu.cli", "sweep", str(sweep)]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    trials = tmp_path / "results" / "resume-tiny" / "trials"
    deadline = time.time() + 300
    while time.time() < deadline and not (trials.exists() and any(trials.glob("*/scorecard.json"))):
        time.sleep(1)
    os.killpg(driver.pid, signal.SIGINT)  # what a terminal sends the whole foreground group on Ctrl-C
    try:
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert any(trials.glob("*/scorecard.json")), "no trial finished before the deadline"
    assert driver.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("igmu: error: sweep resume-tiny: stopped with")
    assert "Traceback" not in stderr
    assert not (tmp_path / "results" / "resume-tiny" / "results.parquet").exists()
    changed_folder = tmp_path / "changed"
    changed_folder.mkdir()
    changed = changed_folder / "resume-tiny.yaml"  # one fixed hyperparameter fewer: other trial settings
    changed.write_text(sweep.read_text().replace("  batch_size: 2\n", ""))
    refused = subprocess.run([sys.executable, "-m", "igmu.cli", "sweep", str(changed), "--resume"], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "igmu: error: sweep resume-tiny: --resume needs the trial settings it started with")
    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    table = pd.read_parquet(tmp_path / "results" / "resume-tiny" / "results.parquet")
    assert len(table) == 3 and table.trial_id.is_unique and table.mlflow_run_id.notna().all()
    from mlflow.tracking import MlflowClient

    from igmu.sweep.results import default_tracking_uri
    client = MlflowClient(default_tracking_uri(tmp_path / "results"))
    experiment = client.get_experiment_by_name("resume-tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`igmu.sweep` = 'resume-tiny'")
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    kids = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and len(kids) == 3
    assert len({r.data.tags[TRIAL_TAG] for r in kids}) == 3


def _manifests(folder):
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def test_no_trial_time_evaluation_touches_a_test_prompt_or_seed(finished_sweep):
    """Every image the trials generated (interim and final scorecards) is of a validation prompt and
    seed; every image of the held-out stage is of a test prompt and seed."""
    from igmu.world.prompts import TEST_SEED_START, prompt_sets

    outcome, _ = finished_sweep
    texts = {}
    for split in ("validation", "test"):
        sets = prompt_sets("hazard", split)
        removed = [p.without(get_concept("hazard")).text for p in sets.forget]
        texts[split] = {t for names in sets.to_json().values() for t in names} | set(removed)
    trial_images = _manifests(outcome.sweep_dir / "images")
    held_out_images = _manifests(outcome.sweep_dir / "images-test")
    assert trial_images and held_out_images
    for made in trial_images:
        assert set(made["prompts"]) <= texts["validation"] and not set(made["prompts"]) & texts["test"]
        assert made["seed"] + len(made["prompts"]) <= TEST_SEED_START
    for made in held_out_images:
        assert set(made["prompts"]) <= texts["test"] and made["seed"] >= TEST_SEED_START


def test_only_the_selected_trials_are_scored_on_the_test_split(finished_sweep):
    from mlflow.tracking import MlflowClient

    from igmu.sweep.results import kept_trials, split_view

    outcome, _ = finished_sweep
    table = pd.read_parquet(outcome.table)
    selected = kept_trials(table.to_dict("records"), {"forgetting": "max", "preservation": "max"}, "front")
    assert selected
    rescored = {row.trial_id for row in table.itertuples() if pd.notna(row.test_forgetting)}
    assert rescored == selected
    cards = {p.parent.name for p in (outcome.sweep_dir / "trials").glob("*/test_scorecard.json")}
    assert cards == {str(t) for t in selected}
    # the held-out stage saw each selected model once: one evaluated model per trial, plus the
    # original and the defaults run
    models = {made["model"] for made in _manifests(outcome.sweep_dir / "images-test")}
    assert len(models) == len(selected) + 2
    client = MlflowClient(outcome.tracking_uri)
    for run in children(client, outcome):
        has_test = "test_forgetting" in run.data.metrics
        assert has_test == (run.data.tags[TRIAL_TAG] in {str(t) for t in selected})
        if has_test:
            row = table[table.mlflow_run_id == run.info.run_id].iloc[0]
            assert run.data.metrics["test_forgetting"] == pytest.approx(row.test_forgetting)
    test_view = split_view(table, "test")
    assert test_view.forgetting.notna().sum() == len(selected)
    defaults = pd.read_parquet(outcome.sweep_dir / "defaults.parquet")
    assert list(defaults.algorithm) == ["esd"] and defaults.test_forgetting.notna().all()
    (run,) = children(client, outcome, role="defaults")
    assert run.data.tags["algorithm"] == "esd" and run.info.run_id == defaults.mlflow_run_id.iloc[0]
    assert run.data.metrics["test_forgetting"] == pytest.approx(defaults.test_forgetting.iloc[0])


def test_eval_from_run_reproduces_a_trials_test_scores_exactly(finished_sweep):
    from igmu.analysis.rescore import rescore_run

    outcome, _ = finished_sweep
    table = pd.read_parquet(outcome.table)
    row = table[table.test_forgetting.notna()].iloc[0]
    result = rescore_run(row.mlflow_run_id, tracking_uri=outcome.tracking_uri)
    assert result["split"] == "test" and all(result["identical"].values())
    assert set(result["identical"]) == set(ASPECTS)
    rescored = result["rescored"]
    assert rescored["aspects"]["forgetting"]["score"] == pytest.approx(row.test_forgetting, abs=0)
    record = rescored["reproduce"]
    assert record["split"] == "test" and record["threads"] == 1 and record["budget"]["forget"] == 6
    assert {"torch", "igmu"} <= set(record["packages"]) and record["git_commit"]
    validation = rescore_run(row.mlflow_run_id, split="validation", tracking_uri=outcome.tracking_uri)
    assert validation["split"] == "validation" and all(validation["identical"].values())
    assert validation["rescored"]["aspects"]["forgetting"]["score"] == row.val_forgetting


def test_the_sweep_summary_reads_the_stored_rows(finished_sweep):
    """The rows name scores per split (val_*, test_*): the printed front and best values still find them."""
    from igmu.analysis.frontier import front_summary
    from igmu.cli.sweeps import _sweep_summary

    outcome, _ = finished_sweep
    config = load_sweep(outcome.sweep_dir.parent.parent / "esd-tiny.yaml")
    assert "hypervolume" in front_summary(outcome.rows, config.objectives)
    summary = _sweep_summary(outcome, config)
    assert "best forgetting" in summary and "held-out test split" in summary and " -> " in summary


def test_every_trial_records_where_its_time_went(finished_sweep):
    """Each trial run carries its worker's seconds per phase and the driver's span of the trial; the
    span covers the work, and the orchestration logged is exactly the rest."""
    from mlflow.tracking import MlflowClient

    from igmu.sweep import profile

    outcome, _ = finished_sweep
    client = MlflowClient(outcome.tracking_uri)
    for run in children(client, outcome):
        metrics = run.data.metrics
        work = profile.work_seconds(metrics)
        wall = metrics[profile.key(profile.WALL)]
        assert metrics[profile.key(profile.SETUP)] > 0 and metrics[profile.key(profile.STEPS)] > 0
        assert metrics[profile.key(profile.INTERIM_GENERATION)] > 0 and metrics[profile.key(profile.INTERIM_JUDGING)] > 0
        assert work <= wall
        assert metrics[profile.key(profile.ORCHESTRATION)] == pytest.approx(wall - work, abs=1e-3)
        finished = run.data.tags["status"] == "finished"
        assert (metrics[profile.key(profile.FINAL_JUDGING)] > 0) == finished
        assert (metrics[profile.key(profile.ARTIFACTS)] > 0) == finished
    parent = client.get_run(outcome.parent_run_id).data.metrics
    assert parent[profile.key(profile.SEARCH)] > 0 and parent[profile.key(profile.HELD_OUT)] > 0


def test_the_profile_bench_adds_up_a_finished_sweep(finished_sweep):
    outcome, folder = finished_sweep
    bench = bench_module("sweep_profile")
    result = bench.report(str(folder / "esd-tiny.yaml"), str(folder / "results"), existing=True)
    total = result["total"]
    assert total["trials"] == total["trials_with_span"] == 6
    assert sum(trial["wall"] for trial in result["trials"]) == pytest.approx(total["trial_wall_s"], abs=0.05)
    shares = total["share"]
    parts = [name for name in bench.GROUPS] + ["orchestration"]
    assert sum(shares[name] for name in parts) == pytest.approx(1.0, abs=0.01)
    assert 0.0 <= result["sweep_times"]["slot_idle_share"] < 1.0
