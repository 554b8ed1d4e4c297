"""A sweep with `eval.judges: serve` records exactly the scores of the same sweep with local judges,
even though the judges' replica is killed while the trial is scoring."""

import json
import textwrap
import threading
import time

import pytest
from sweep_helpers import children
from test_sweep import TINY_BUDGETS

from igmu.metrics.base import ASPECTS
from igmu.sweep.engine import run_sweep
from igmu.sweep.file import load_sweep

# Sweeps on a real Ray with a real Serve application.
pytestmark = pytest.mark.slow


def write_sweep(folder, name: str, judges: str):
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        model: world
        target: hazard
        algorithm: esd
        params: {{lr: 1.0e-3, steps: 2, ddim_steps: 4, batch_size: 2}}
        search: {{sampler: random, num_samples: 1, max_concurrent: 1, seed: 0}}
        early_stop: {{scheduler: none, eval_every: 1}}
        resources: {{cpu: 1}}
        eval: {{judges: {judges}, held_out: none}}
    """))
    return path


def kill_the_replica_once_it_scores(killed: list, stop: threading.Event) -> None:
    """Wait until the served judges have scored a request, then kill their replica."""
    import ray
    from serve_helpers import replica_actor_names

    from igmu.serve.client import HandleJudgeClient
    from igmu.serve.control import judges_running

    while not stop.is_set() and not judges_running():
        time.sleep(0.2)
    client = HandleJudgeClient()
    while not stop.is_set():
        if client.stats()["requests"] > 0:
            (victim,) = replica_actor_names()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            killed.append(victim)
            return
        time.sleep(0.2)


def only_trial(outcome):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(outcome.tracking_uri)
    (run,) = children(client, outcome)
    (row,) = outcome.rows
    card = json.loads((outcome.sweep_dir / "trials" / row["trial_id"] / "scorecard.json").read_text())
    return row, run, card


def test_serve_judges_record_the_same_scores_as_local_judges(ray_session, tmp_path):
    from ray import serve

    extra = {"budget_sizes": TINY_BUDGETS}
    local = run_sweep(load_sweep(write_sweep(tmp_path, "judges-local", "local")), storage=str(tmp_path / "results"),
                      verbose=0, extra_settings=extra)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=kill_the_replica_once_it_scores, args=(killed, stop), daemon=True)
    killer.start()
    try:
        served = run_sweep(load_sweep(write_sweep(tmp_path, "judges-serve", "serve")),
                           storage=str(tmp_path / "results"), verbose=0, extra_settings=extra)
    finally:
        stop.set()
        killer.join(timeout=60)
        serve.shutdown()
    assert killed, "the replica was never killed while the trial scored"
    local_row, local_run, local_card = only_trial(local)
    served_row, served_run, served_card = only_trial(served)
    assert local_row["status"] == served_row["status"] == "finished"
    assert served_card["aspects"] == local_card["aspects"]
    timings = ("efficiency_", "profile_")  # wall-clock measurements, different in every run
    scores = {k: v for k, v in local_run.data.metrics.items() if not k.startswith(timings)}
    assert {f"val_{a}" for a in ASPECTS} | {"interim_forget_retain_hmean", "val_pre_asr"} <= set(scores)
    assert {k: v for k, v in served_run.data.metrics.items() if not k.startswith(timings)} == scores
