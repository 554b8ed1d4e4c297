"""Benchmark: the production stack under load, on one machine, all real.

(1) A sweep of `--trials` trials, all running at once on a two-worker cluster (scripts/local_cluster.py),
    reporting through the driver to an `mlflow server` on PostgreSQL with artifacts in S3 (moto), and
    Tune's checkpoints in that S3: every MLflow request the driver makes is timed (p50/p99), failed
    requests counted, and every trial's run checked against what the trial reported (lost metrics:
    interim scores, loss curve points and final scores that should be in MLflow and are not).
(2) The world judges on Ray Serve (one replica) on the same cluster under `--clients` concurrent
    clients, each sending `--requests` requests of `--request-images` images: per-request latency
    (p50/p99), failed requests, and retries the client needed.

The stack is tests/cluster_stack.py's, the one tests/test_cluster.py runs against.

Usage: python bench/cluster_load.py [--trials 8] [--clients 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the stack the tests run against

TINY_BUDGETS = {"small": {"forget": 6, "retain": 8, "related": 4, "paraphrase": 0}}
STEPS, EVAL_EVERY = 6, 2


def percentiles(samples: list[float]) -> dict:
    import numpy as np

    if not samples:
        return {"n": 0}
    values = np.array(samples) * 1000
    return {"n": len(samples), "p50_ms": round(float(np.percentile(values, 50)), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1), "max_ms": round(float(values.max()), 1)}


class RequestTimer:
    """Times every HTTP request MLflow's client makes, by wrapping its one request function where
    MLflow's modules call it (the requests still go to the real server)."""

    def __init__(self):
        self.seconds: list[float] = []
        self.failed: list[str] = []
        self.lock = threading.Lock()

    def install(self) -> None:
        import mlflow.store.artifact.http_artifact_repo  # noqa: F401  (its import of http_request is wrapped too)
        import mlflow.store.tracking.rest_store  # noqa: F401
        from mlflow.utils import rest_utils

        original = rest_utils.http_request

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                response = original(*args, **kwargs)
            except Exception as err:
                with self.lock:
                    self.failed.append(f"{kwargs.get('endpoint')}: {type(err).__name__}")
                raise
            with self.lock:
                self.seconds.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    self.failed.append(f"{kwargs.get('endpoint')}: HTTP {response.status_code}")
            return response

        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("mlflow") and getattr(module, "http_request", None) is original:
                module.http_request = timed


def sweep_file(folder: Path, trials: int) -> Path:
    path = folder / "load.yaml"
    path.write_text(textwrap.dedent(f"""
        name: load
        model: world
        target: hazard
        algorithm: esd
        params:
          lr: {{loguniform: [1.0e-4, 3.0e-2]}}
          steps: {STEPS}
          ddim_steps: 4
          batch_size: 2
        search: {{sampler: random, num_samples: {trials}, max_concurrent: {trials}, seed: 0}}
        objectives: {{forgetting: max, preservation: max}}
        early_stop: {{scheduler: none, eval_every: {EVAL_EVERY}}}
        resources: {{cpu: 1}}
        eval: {{interim: small, final: small, defaults: false, held_out: none}}
    """))
    return path


def lost_metrics(client, rows: list[dict]) -> dict:
    """What each finished trial reported that its MLflow run lacks: interim scores at every interim
    evaluation, a loss point at every step, and the final validation scores."""
    from igmu.metrics.base import ASPECTS

    interim_steps = list(range(EVAL_EVERY, STEPS, EVAL_EVERY))
    lost, expected = 0, 0
    for row in rows:
        run = client.get_run(row["mlflow_run_id"])
        for aspect in ("forgetting", "preservation"):
            got = {m.step for m in client.get_metric_history(run.info.run_id, f"interim_{aspect}")}
            expected += len(interim_steps)
            lost += len(set(interim_steps) - got)
        losses = [key for key in run.data.metrics if key.startswith("loss_")]
        for key in losses:
            got = {m.step for m in client.get_metric_history(run.info.run_id, key)}
            expected += STEPS
            lost += len(set(range(1, STEPS + 1)) - got)
        expected += len(ASPECTS) + (0 if losses else 1)  # no loss curve at all counts as one lost metric
        lost += sum(f"val_{a}" not in run.data.metrics for a in ASPECTS) + (0 if losses else 1)
    return {"expected": expected, "lost": lost}


def sweep_load(stack: dict, cluster: dict, folder: Path, trials: int) -> dict:
    from mlflow.tracking import MlflowClient

    from igmu.sweep.engine import run_sweep
    from igmu.sweep.file import load_sweep

    timer = RequestTimer()
    timer.install()
    started = time.time()
    outcome = run_sweep(load_sweep(sweep_file(folder, trials)), address=cluster["address"],
                        storage="s3://igmu-test/tune", tracking_uri=stack["mlflow"], verbose=0)
    seconds = time.time() - started
    statuses = [row["status"] for row in outcome.rows]
    return {"trials": len(outcome.rows), "failed_trials": sum(s == "error" for s in statuses),
            "finished_trials": statuses.count("finished"), "seconds": round(seconds, 1),
            "nodes": len({row["node"] for row in outcome.rows}),
            "mlflow_requests": percentiles(timer.seconds), "failed_requests": len(timer.failed),
            "failed_request_examples": timer.failed[:5],
            "metrics": lost_metrics(MlflowClient(stack["mlflow"]), [r for r in outcome.rows if r["status"] == "finished"])}


def serve_load(clients: int, requests: int, request_images: int) -> dict:
    import numpy as np
    from ray import serve

    from igmu.serve import APP_NAME
    from igmu.serve.client import HandleJudgeClient
    from igmu.serve.config import load_serve_config
    from igmu.serve.control import deploy_judges
    from igmu.world.render import random_scene, render_batch

    rng = np.random.default_rng(0)
    images = np.ascontiguousarray(render_batch([random_scene(rng) for _ in range(request_images)]).transpose(0, 3, 1, 2))
    deploy_judges(load_serve_config(None, {"max_batch_size": 256, "max_images_per_request": request_images,
                                           "deployment": {"num_replicas": 1, "max_ongoing_requests": 4 * clients,
                                                          "ray_actor_options": {"num_cpus": 1}}}))
    client = HandleJudgeClient()
    client.predict("object", images)  # warm-up: the replica loads its judges
    seconds: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(requests):
            started = time.perf_counter()
            try:
                scores = client.predict("object", images)
                ok = len(next(iter(scores.values()))) == len(images)
            except Exception as err:  # counted, not raised: the bench reports every failure
                with lock:
                    failures.append(type(err).__name__)
                continue
            with lock:
                seconds.append(time.perf_counter() - started)
                if not ok:
                    failures.append("wrong number of scores")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    serve.delete(APP_NAME)
    return {"clients": clients, "requests": clients * requests, "failed_requests": len(failures),
            "failure_examples": failures[:5], "client_retries": client.retries, "latency": percentiles(seconds),
            "images_per_s": round(len(seconds) * request_images / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials of the sweep, all running at once")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the judges")
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--request-images", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from cluster_stack import local_cluster, node_env, tracking_stack

    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="igmu-load"))
    with tracking_stack(folder / "stack") as stack, \
            local_cluster(folder / "cluster", node_env(stack["s3_env"]), workers=2,
                          worker_cpus=max(1, (args.trials + 1) // 2)) as cluster:
        # This process is the driver: it needs the cluster's token before Ray is imported, and the
        # trials' settings the tiny budgets.
        os.environ.update({key: cluster["driver_env"][key] for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        os.environ.update({**stack["s3_env"], "IGMU_RESULTS": str(folder / "results"),
                           "IGMU_BUDGET_SIZES": json.dumps(TINY_BUDGETS), "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"})
        import ray

        try:
            sweep = sweep_load(stack, cluster, folder, args.trials)
            load_sweep_end = os.getloadavg()
            judges = serve_load(args.clients, args.requests, args.request_images)
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    result = {"sweep": sweep, "serve": judges,
              "machine": {"cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                          "load_after_sweep": [round(x, 2) for x in load_sweep_end],
                          "load_after": [round(x, 2) for x in os.getloadavg()]}}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
