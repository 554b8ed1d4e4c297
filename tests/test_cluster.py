"""Sweeps on a multi-node Ray cluster against the production tracking stack, all real: a head and two
worker nodes started by scripts/local_cluster.py (as docs/deploy.md says), an `mlflow server` on
PostgreSQL with its artifacts in S3 (moto's server), and Tune's checkpoints in that S3
(`--storage s3://...`). A worker node is killed in the middle of one sweep and the driver in the
middle of another; either way every trial must appear exactly once in the results table and exactly
once in MLflow, and finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from cluster_stack import BUCKET, CLUSTER_SCRIPT, group_alive, s3_keys, stack_and_cluster
from test_sweep import TINY_BUDGETS

from igmu.sweep.tracking import DEFAULTS_ROLE, NODES_TAG, PARENT_TAG, ROLE_TAG, TRIAL_TAG

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TRIALS = 3
SWEEP_TIMEOUT_S = 480
# A node-kill trial evaluates at steps 2, 4 and 6: after the first, its checkpoint is in S3 and two
# evaluations remain, time enough to kill its node before it finishes. The driver-kill sweep needs
# only a finished trial and unfinished ones: 4 steps. The final scorecard is on the small budget too
# (no attack): these tests are about where trials run and what gets recorded, not the scores.
STEPS, EVAL_EVERY, DRIVER_KILL_STEPS = 6, 2, 4


def write_sweep(folder, name: str, steps: int = STEPS):
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
        search: {{sampler: tpe, num_samples: {TRIALS}, max_concurrent: 2, seed: 0}}
        objectives: {{forgetting: max, preservation: max}}
        early_stop: {{scheduler: none, eval_every: {EVAL_EVERY}}}
        resources: {{cpu: 1}}
        eval: {{interim: small, final: small, defaults: false, held_out: none}}
    """))
    return path


@pytest.fixture(scope="module")
def stack_cluster(tmp_path_factory):
    """One stack and one cluster for the module: the driver-kill test leaves the cluster whole, the
    node-kill sweep (last) takes a worker away."""
    with stack_and_cluster(tmp_path_factory.mktemp("stack")) as started:
        yield started


@pytest.fixture(scope="module")
def stack(stack_cluster):
    return stack_cluster[0]


@pytest.fixture(scope="module")
def cluster(stack_cluster):
    return stack_cluster[1]


def sweep_command(sweep_file, cluster, stack, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "igmu.cli", "sweep", str(sweep_file), "--address", cluster["address"],
            "--storage", f"s3://{BUCKET}/tune", "--tracking-uri", stack["mlflow"], *(["--resume"] if resume else [])]


def driver_env(cluster, results) -> dict:
    return {**cluster["driver_env"], "IGMU_RESULTS": str(results), "IGMU_BUDGET_SIZES": json.dumps(TINY_BUDGETS),
            "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def trial_runs(client, name: str):
    """(parent runs, trial runs) of the sweep `name` in MLflow: trial runs carry `igmu.trial_id`; the
    held-out stage's defaults runs are not trials."""
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r}"
    runs = client.search_runs([experiment.experiment_id], f"tags.`igmu.sweep` = '{name}'", max_results=1000)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    trials = [r for r in runs if TRIAL_TAG in r.data.tags and r.data.tags.get(ROLE_TAG) != DEFAULTS_ROLE]
    return parents, trials


def assert_exactly_once(client, name: str, results) -> tuple[pd.DataFrame, list]:
    """Every trial once in the table and once in MLflow, the two joined, all finished."""
    table = pd.read_parquet(results / name / "results.parquet")
    parents, trials = trial_runs(client, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(table) == TRIALS and table.trial_id.is_unique
    assert len(trials) == TRIALS and len({r.data.tags[TRIAL_TAG] for r in trials}) == TRIALS
    assert set(table.trial_id) == {r.data.tags[TRIAL_TAG] for r in trials}
    assert set(table.mlflow_run_id) == {r.info.run_id for r in trials}
    assert (table.status == "finished").all(), table[["trial_id", "status"]]
    assert all(r.data.tags[PARENT_TAG] == parents[0].info.run_id and r.info.status == "FINISHED" for r in trials)
    return table, trials


def run_driver(command, env, log):
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, driver, log, what: str, timeout_s: float = SWEEP_TIMEOUT_S):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        if driver.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout_s} s:\n{log.read_text()[-4000:]}")


def test_a_gpu_request_the_cluster_cannot_meet_is_one_line(stack, cluster, tmp_path):
    """Its workers stand in for GPU nodes, but have no GPU: joining the cluster must print nothing
    before the refusal."""
    from cluster_stack import REPO

    results = tmp_path / "results"
    refused = subprocess.run([sys.executable, "-m", "igmu.cli", "sweep", str(REPO / "sweeps" / "salun-gpu.yaml"),
                              "--address", cluster["address"], "--tracking-uri", stack["mlflow"]],
                             env=driver_env(cluster, results), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "resources.gpu" in refused.stderr, refused.stderr
    assert not results.exists()


def test_killing_the_driver_and_resuming_finishes_every_trial_once(stack, cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    name, results = "driver-kill", tmp_path / "results"
    sweep, env, log = write_sweep(tmp_path, name, DRIVER_KILL_STEPS), driver_env(cluster, results), tmp_path / "log"
    driver = run_driver(sweep_command(sweep, cluster, stack), env, log)
    client = MlflowClient(stack["mlflow"])

    def finished_runs():  # trials whose completion the driver has recorded in MLflow
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id], "tags.status = 'finished'") if experiment else []
        return {run.data.tags[TRIAL_TAG]: run.info.run_id for run in runs}

    try:
        wait_for(finished_runs, driver, log, "finished trial")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and all it started, mid-sweep
        driver.wait()
    assert not (results / name / "results.parquet").exists(), "the sweep finished before the driver was killed"
    finished = finished_runs()
    resumed = subprocess.run(sweep_command(sweep, cluster, stack, resume=True), env=env, capture_output=True,
                             text=True, timeout=SWEEP_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    table, _ = assert_exactly_once(client, name, results)
    # No finished trial is lost: each keeps its run, and its row says finished.
    rows = table.set_index("trial_id")
    assert {trial: rows.mlflow_run_id[trial] for trial in finished} == finished
    workers = {node["node_id"] for label, node in cluster["nodes"].items() if label != "head"}
    assert set(table.node) <= workers and table.node.notna().all()
    assert s3_keys(stack["s3"], f"tune/{name}/tune/"), "Tune kept nothing in S3"


@pytest.fixture(scope="module")
def node_kill_sweep(stack, cluster, tmp_path_factory):
    """A sweep during which worker-1 is SIGKILLed (raylet, object store, trial workers) right after
    one of its trials checkpointed."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("node-kill")
    name, results, log = "node-kill", folder / "results", folder / "driver.log"
    victim = cluster["nodes"]["worker-1"]
    driver = run_driver(sweep_command(write_sweep(folder, name), cluster, stack), driver_env(cluster, results), log)
    client = MlflowClient(stack["mlflow"])

    def checkpointed_on_victim():
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id],
                                  f"tags.node = '{victim['node_id']}' and tags.status = 'running'")
        return [r for r in runs if "interim_forgetting" in r.data.metrics]

    try:
        (running,) = wait_for(checkpointed_on_victim, driver, log, "trial checkpointed on worker-1")[:1]
        # As docs/deploy.md says to: the script SIGKILLs the node's process group.
        subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "kill", "worker-1", "--state", str(cluster["state"])],
                       check=True, capture_output=True)
        driver.wait(timeout=SWEEP_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, log.read_text()[-4000:]
    return {"client": client, "name": name, "results": results, "victim": victim, "moved_run": running.info.run_id,
            "s3": stack["s3"]}


def test_killing_a_worker_node_loses_no_trial(node_kill_sweep, cluster):
    sweep = node_kill_sweep
    assert not group_alive(sweep["victim"]["pgid"]), "a process of the killed node survived"
    table, trials = assert_exactly_once(sweep["client"], sweep["name"], sweep["results"])
    (moved,) = [r for r in trials if r.info.run_id == sweep["moved_run"]]
    survivor = cluster["nodes"]["worker-2"]["node_id"]
    # It ran on the killed node, then on the surviving one, where it finished (the table says so too).
    assert moved.data.tags[NODES_TAG].split(",") == [sweep["victim"]["node_id"], survivor]
    assert table.set_index("mlflow_run_id").node[moved.info.run_id] == survivor == moved.data.tags["node"]
    # From its last checkpoint: no evaluation step was run (and logged) twice.
    history = sweep["client"].get_metric_history(moved.info.run_id, "interim_forgetting")
    steps = [m.step for m in history]
    assert sorted(steps) == sorted(set(steps)) and steps, steps
    assert table.node.notna().all() and survivor in set(table.node)


def test_trials_spread_over_both_worker_nodes_and_record_theirs(node_kill_sweep, cluster):
    sweep = node_kill_sweep
    table, trials = assert_exactly_once(sweep["client"], sweep["name"], sweep["results"])
    workers = {cluster["nodes"][label]["node_id"] for label in ("worker-1", "worker-2")}
    visited = {node for r in trials for node in r.data.tags[NODES_TAG].split(",")}
    assert visited == workers  # both worker nodes ran trials, the head (0 CPUs) none
    for run in trials:
        row = table[table.mlflow_run_id == run.info.run_id].iloc[0]
        assert run.data.tags["node"] == row.node == run.data.tags[NODES_TAG].split(",")[-1]
        assert run.data.tags["node.ip"] and run.data.tags["node.hostname"]
    checkpoints = [key for key in s3_keys(sweep["s3"], f"tune/{sweep['name']}/tune/") if "checkpoint_" in key]
    assert checkpoints, "no trial checkpoint in S3"
    # The server stored the trials' artifacts in S3 (the driver logged them over HTTP).
    stored = s3_keys(sweep["s3"], "mlflow/")
    for run in trials:
        assert any(key.endswith(f"{run.info.run_id}/artifacts/scorecard.json") for key in stored), run.info.run_id
