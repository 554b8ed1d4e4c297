"""The RayJob path without Kubernetes: a real Ray head (`ray start --head`, Jobs API on), a real
`mlflow server` reached over HTTP, and the RayJob's own entrypoint and runtime env (from the
rendered dev overlay) submitted with `ray job submit`; the sweep's runs must land in MLflow.

Only the sweep file (a tiny one) and the `--storage` path differ from the manifest; the head's
working directory holds `sweeps/` the way the image's WORKDIR does.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_k8s import kustomize as build
from test_sweep import TINY_BUDGETS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVER_START_S = 120
JOB_TIMEOUT_S = 420
TRIALS = 2
AGENT_NOT_READY = "No available agent to submit job"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + SERVER_START_S
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # it answered (the Jobs API answers 401 without the token)
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} not up after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process we started (a `ray start --block` stops its own Ray), then its group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of this group only (started with a new session)
    except ProcessLookupError:
        pass


def tiny_sweep(app_dir: Path) -> Path:
    path = app_dir / "sweeps" / "k8s-tiny.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent(f"""
        name: k8s-tiny
        model: world
        target: hazard
        algorithm: esd
        params:
          lr: {{loguniform: [1.0e-4, 3.0e-2]}}
          steps: 2
          ddim_steps: 4
          batch_size: 2
        search: {{sampler: tpe, num_samples: {TRIALS}, max_concurrent: 2, seed: 0}}
        objectives: {{forgetting: max, preservation: max}}
        early_stop: {{scheduler: none, eval_every: 2}}
        resources: {{cpu: 1}}
        eval: {{interim: small, final: small, held_out: none}}
    """))
    return path.relative_to(app_dir)


def launch(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


@pytest.fixture
def servers(tmp_path):
    """An MLflow server with the cluster's flags (local SQLite and artifact folder) and a Ray head
    like KubeRay's (started in the image's working directory, token auth on, Jobs API up), started
    side by side to halve the wait."""
    mlflow_port, dashboard = free_port(), free_port()
    mlflow = launch([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                     "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                     "--artifacts-destination", str(tmp_path / "artifacts"),
                     "--allowed-hosts", f"127.0.0.1,127.0.0.1:{mlflow_port}", "--workers", "1"],
                    tmp_path / "mlflow.log")
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "IGMU_BUDGET_SIZES": json.dumps(TINY_BUDGETS)}
    env.pop("RAY_ADDRESS", None)
    temp_dir = Path(tempfile.mkdtemp(prefix="ray"))  # short: Ray's socket paths must fit 107 bytes
    head = launch([str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}",
                   f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                   # every fixed default port may belong to another Ray on this machine (52365, 10001)
                   f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                   f"--temp-dir={temp_dir}", "--num-cpus=2",
                   "--num-gpus=0"], tmp_path / "ray-head.log", cwd=app_dir, env=env)
    try:
        mlflow_url, ray_address = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{dashboard}"
        wait_for(f"{mlflow_url}/health", mlflow, tmp_path / "mlflow.log")  # the Deployment's readinessProbe path
        wait_for(f"{ray_address}/api/version", head, tmp_path / "ray-head.log")
        yield {"mlflow": mlflow_url, "address": ray_address, "app_dir": app_dir, "client_env": env}
    finally:
        stop(head)
        stop(mlflow)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the head's job agent is still starting (the Jobs API says
    so, and nothing has been submitted then)."""
    deadline = time.time() + SERVER_START_S
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        if result.returncode == 0 or AGENT_NOT_READY not in result.stderr or time.time() > deadline:
            return result
        time.sleep(2)


def rayjob_from_manifest() -> dict:
    return next(o for o in build(REPO / "k8s" / "overlays" / "dev") if o["kind"] == "RayJob")


def local_entrypoint(manifest_entrypoint: str, sweep_file: Path, storage: Path) -> list[str]:
    """The manifest's argv with only the sweep file and the --storage value swapped."""
    argv = shlex.split(manifest_entrypoint)
    assert argv[:2] == ["igmu", "sweep"] and argv[2].startswith("sweeps/")
    argv[2] = str(sweep_file)
    argv[argv.index("--storage") + 1] = str(storage)
    return argv


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    from igmu.sweep.results import default_tracking_uri, resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, None, tmp_path) == default_tracking_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://igmu-mlflow:5000")
    assert resolve_tracking_uri(None, None, tmp_path) == "http://igmu-mlflow:5000"
    assert resolve_tracking_uri(None, "sqlite:////x/file.db", tmp_path) == "sqlite:////x/file.db"
    assert resolve_tracking_uri("http://flag:1", "sqlite:////x/file.db", tmp_path) == "http://flag:1"


@pytest.mark.integration
@pytest.mark.slow
def test_rayjob_entrypoint_runs_through_the_jobs_api_and_logs_to_an_mlflow_server(servers, tmp_path):
    from mlflow.tracking import MlflowClient

    from igmu.sweep.tracking import PARENT_TAG, TRIAL_TAG

    job = rayjob_from_manifest()["spec"]
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert set(runtime_env["env_vars"]) == {"MLFLOW_TRACKING_URI"}
    runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] = servers["mlflow"]  # the cluster's: http://igmu-mlflow:5000
    storage = tmp_path / "shared-results"
    argv = local_entrypoint(job["entrypoint"], tiny_sweep(servers["app_dir"]), storage)
    started = time.time()
    submitted = submit([str(BIN / "ray"), "job", "submit", "--address", servers["address"],
                        "--runtime-env-json", json.dumps(runtime_env), "--", *argv], servers["client_env"])
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0 and "succeeded" in output, output[-4000:]
    print(f"job finished in {time.time() - started:.0f} s")

    client = MlflowClient(servers["mlflow"])
    experiment = client.get_experiment_by_name("k8s-tiny")
    assert experiment is not None, output[-4000:]
    runs = client.search_runs([experiment.experiment_id], "tags.`igmu.sweep` = 'k8s-tiny'")
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    trials = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == TRIALS and len({r.data.tags[TRIAL_TAG] for r in trials}) == TRIALS
    for run in trials:
        assert run.data.tags[PARENT_TAG] == parents[0].info.run_id and run.data.tags["status"] == "finished"
        assert {"val_forgetting", "val_preservation", "efficiency_seconds"} <= set(run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}  # proxied by the server
        assert {"scorecard.json", "grid.png"} <= artifacts
    table = storage / "k8s-tiny" / "results.parquet"
    import pandas as pd

    assert set(pd.read_parquet(table).mlflow_run_id) == {r.info.run_id for r in trials}


@pytest.mark.slow
def test_gpu_capacity_counts_what_the_autoscaler_can_add(ray_session):
    """KubeRay's autoscaler writes each worker group's resources and max replicas to the GCS; a GPU
    sweep must be accepted on a cluster whose GPU group is at 0 nodes but may grow."""
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    from igmu.errors import UsageError
    from igmu.sweep.engine import gpu_capacity
    from igmu.sweep.file import check_resources, load_sweep

    gpu_sweep = load_sweep(REPO / "sweeps" / "salun-gpu.yaml")
    assert gpu_capacity() == 0
    with pytest.raises(UsageError, match="resources.gpu"):
        check_resources(gpu_sweep, gpu_capacity())
    config = autoscaler_pb2.ClusterConfig()
    config.node_group_configs.add(name="cpu", resources={"CPU": 4}, min_count=1, max_count=4)
    config.node_group_configs.add(name="gpu", resources={"CPU": 8, "GPU": 1}, min_count=0, max_count=4)
    key, namespace = GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), GCS_AUTOSCALER_STATE_NAMESPACE.encode()
    _internal_kv_put(key, config.SerializeToString(), namespace=namespace)
    try:
        assert gpu_capacity() == 4
        check_resources(gpu_sweep, gpu_capacity())  # accepted: the autoscaler can add the GPU nodes
    finally:
        _internal_kv_del(key, namespace=namespace)
    assert gpu_capacity() == 0
