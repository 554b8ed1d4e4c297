"""End-to-end sweeps with a real local Ray, real Optuna and a real MLflow store, at a tiny budget."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from sweep_helpers import children

from igmu.metrics.base import ASPECTS
from igmu.sweep.engine import run_sweep
from igmu.sweep.file import load_sweep
from igmu.sweep.tracking import PARENT_TAG, TRIAL_TAG

# Real sweeps on Ray, or `igmu sweep` in a subprocess that loads torch.
pytestmark = pytest.mark.slow

TINY_BUDGETS = {
    "small": {"forget": 6, "retain": 8, "related": 4, "paraphrase": 0},
    "full": {"forget": 6, "retain": 8, "related": 4, "paraphrase": 4, "attack_prompts": 2, "attack_steps": 2},
}


def write_sweep(folder, name, samples=4, steps=6):
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
    """))
    return path


@pytest.fixture(scope="module")
def finished_sweep(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    config = load_sweep(write_sweep(folder, "esd-tiny", samples=6))
    outcome = run_sweep(config, storage=str(folder / "results"), verbose=0,
                        extra_settings={"budget_sizes": TINY_BUDGETS,
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
            assert set(ASPECTS) <= set(run.data.metrics) and "efficiency_seconds" in run.data.metrics
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"grid.png", "scorecard.json"} <= artifacts
        else:
            assert run.data.tags["status"] == "early_stopped" and run.data.tags["early_stopped"] == "true"
            assert not set(ASPECTS) & set(run.data.metrics)


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
        assert 0.0 <= row.unrecognisable_share <= 1.0  # every trial judged recognisability
        if row.status == "finished":
            for aspect in ASPECTS:
                assert getattr(row, aspect) == pytest.approx(run.data.metrics[aspect])
            assert row.degenerate == bool(run.data.metrics["degenerate"])
            assert row.unrecognisable_share == pytest.approx(run.data.metrics["unrecognisable_share"])
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


def test_resume_after_killing_the_driver(tmp_path):
    """Kill the driver once a trial has finished; --resume completes the sweep without duplicates."""
    sweep = write_sweep(tmp_path, "resume-tiny", samples=3, steps=4)
    env = {**os.environ, "IGMU_RESULTS": str(tmp_path / "results"), "IGMU_BUDGET_SIZES": json.dumps(TINY_BUDGETS)}
    command = [sys.executable, "-m", "igmu.cli", "sweep", str(sweep)]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    trials = tmp_path / "results" / "resume-tiny" / "trials"
    deadline = time.time() + 300
    while time.time() < deadline and not (trials.exists() and any(trials.glob("*/scorecard.json"))):
        time.sleep(1)
    os.killpg(driver.pid, 9)
    driver.wait()
    assert any(trials.glob("*/scorecard.json")), "no trial finished before the deadline"
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
