"""Benchmark: the production stack under load, on one machine, all real.

(1) A sweep of `--trials` trials, all running at once on a two-worker cluster (scripts/local_cluster.py),
    reporting through the driver to an `mlflow server` on PostgreSQL with artifacts in S3 (moto), and
    Tune's checkpoints in that S3: every MLflow request the driver makes is timed (p50/p99), failed
    requests (exceptions, 5xx) counted, and every trial's run checked against what the trial reported,
    as Tune's result.json files record it (lost metrics: interim scores, loss curve points and final
    scores reported but not in MLflow).
(2) The world judges on Ray Serve (one replica) on the same cluster under `--clients` concurrent
    clients, each sending `--requests` requests of `--request-images` images: per-request latency
    (p50/p99), failed requests, and retries the client needed.

The stack is tests/cluster_stack.py's, the one tests/test_cluster.py runs against.

Usage: python bench/cluster_load.py [--trials 8] [--clients 16] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
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
        # 4xx answers are the server answering a question (get-by-name of an experiment not made yet).
        self.client_errors: list[str] = []
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
                if response.status_code >= 500:
                    self.failed.append(f"{kwargs.get('endpoint')}: HTTP {response.status_code}")
                elif response.status_code >= 400:
                    self.client_errors.append(f"{kwargs.get('endpoint')}: HTTP {response.status_code}")
            return response

        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "")
            if name.startswith("mlflow") and getattr(module, "http_request", None) is original:
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


def reported_results(endpoint: str, prefix: str) -> dict[str, list[dict]]:
    """Trial id -> every result the trial reported, as Tune's JSON logger kept them in S3 (result.json):
    what MLflow must hold."""
    from cluster_stack import BUCKET, s3_client, s3_keys

    client = s3_client(endpoint)
    results: dict[str, list[dict]] = {}
    for key in s3_keys(endpoint, prefix):
        if key.endswith("/result.json"):
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            for line in body.splitlines():
                if line.strip():
                    result = json.loads(line)
                    results.setdefault(result["trial_id"], []).append(result)
    return results


def expected_points(results: list[dict]) -> set[tuple[str, int]]:
    """(metric, step) pairs the driver must log for these reports (igmu.sweep.tracking's naming)."""
    import math

    from igmu.metrics.base import ASPECTS
    from igmu.sweep.results import HMEAN

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    points = set()
    for result in results:
        step = int(result["step"])
        if result.get("final"):
            points |= {(f"val_{a}", step) for a in ASPECTS if finite(result.get(a))}
        else:
            points |= {(f"interim_{a}", step) for a in (*ASPECTS, HMEAN) if finite(result.get(a))}
        points |= {(f"loss_{name}", int(entry["step"])) for entry in result.get("loss_steps") or []
                   for name, value in entry.items() if name != "step" and finite(value)}
    return points


def lost_metrics(client, rows: list[dict], reported: dict[str, list[dict]]) -> dict:
    """Metric points the trials reported (per Tune's own record) that their MLflow runs lack."""
    expected, lost, missing_trials = 0, 0, 0
    for row in rows:
        points = expected_points(reported.get(row["trial_id"], []))
        if not points:
            missing_trials += 1  # no record of what it reported: counted, not guessed
            continue
        expected += len(points)
        for name in {name for name, _ in points}:
            logged = {m.step for m in client.get_metric_history(row["mlflow_run_id"], name)}
            lost += sum(step not in logged for metric, step in points if metric == name)
    return {"expected": expected, "lost": lost, "trials_without_record": missing_trials}


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
            "failed_request_examples": timer.failed[:5], "answered_4xx": timer.client_errors[:5],
            "metrics": lost_metrics(MlflowClient(stack["mlflow"]), outcome.rows,
                                    reported_results(stack["s3"], "tune/load/tune/"))}


def serve_load(clients: int, requests: int, request_images: int) -> dict:
    import numpy as np
    from ray import serve

    from igmu.serve import APP_NAME
    from igmu.serve.client import HandleJudgeClient
    from igmu.serve.config import load_serve_config
    from igmu.serve.control import deploy_judges
    from igmu.world.render import random_scene, render_batch

    rng = np.random.default_rng(0)
    scenes = [random_scene(rng) for _ in range(request_images)]
    images = np.ascontiguousarray(render_batch(scenes).transpose(0, 3, 1, 2))
    # Every client's request can wait in the replica at once (max_ongoing_requests), so batches fill
    # from all of them; Serve requires it to be at least the batch size.
    batch = max(clients * request_images, request_images)
    deploy_judges(load_serve_config(None, {"max_batch_size": batch, "max_images_per_request": request_images,
                                           "deployment": {"num_replicas": 1, "max_ongoing_requests": batch,
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

    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="igmu-load"))
    # Tune's tables and MLflow's run links print to stdout: keep it for the result alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(args, folder, load_before)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    shutil.rmtree(folder, ignore_errors=True)


def run(args, folder: Path, load_before) -> dict:
    from cluster_stack import stack_and_cluster

    with stack_and_cluster(folder, workers=2, worker_cpus=max(1, (args.trials + 1) // 2)) as (stack, cluster):
        # This process is the driver: it needs the cluster's token before Ray is imported, and the
        # trials' settings the tiny budgets.
        os.environ.update({key: cluster["driver_env"][key] for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        # Tune's JSON logger stays on: its result.json files in S3 are the record of what each trial
        # reported, which MLflow is checked against.
        os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        os.environ.update({**stack["s3_env"], "IGMU_RESULTS": str(folder / "results"),
                           "IGMU_BUDGET_SIZES": json.dumps(TINY_BUDGETS)})
        import ray

        try:
            sweep = sweep_load(stack, cluster, folder, args.trials)
            load_sweep_end = os.getloadavg()
            judges = serve_load(args.clients, args.requests, args.request_images)
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    return {"sweep": sweep, "serve": judges,
            "machine": {"cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                        "load_after_sweep": [round(x, 2) for x in load_sweep_end],
                        "load_after": [round(x, 2) for x in os.getloadavg()]}}


if __name__ == "__main__":
    main()
