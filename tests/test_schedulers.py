"""Early stopping in a sweep over several algorithms ranks a trial only against its own algorithm
(igmu/sweep/schedulers.py): unit checks with Ray's real ASHA on stub trials, then a real sweep."""

import pickle
import textwrap
from pathlib import Path

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from test_sweep import TINY_BUDGETS

from igmu.sweep.engine import make_scheduler, run_sweep
from igmu.sweep.file import load_sweep
from igmu.sweep.schedulers import PerAlgorithmASHA

METRIC = "forget_retain_hmean"
SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def trial(algorithm: str) -> Trial:
    return Trial("run_trial", config={"algorithm": algorithm}, stub=True)


def report(scheduler, each: Trial, iteration: int, score: float) -> str:
    return scheduler.on_trial_result(None, each, {"training_iteration": iteration, METRIC: score})


def finished_uce_then_a_slow_start(scheduler) -> str:
    """Four UCE trials report their finished models (0.9) at the first rung; then a fine-tuning trial
    reports its first interim score (0.3). The decision on the fine-tuning trial."""
    for _ in range(4):
        uce = trial("uce")
        scheduler.on_trial_add(None, uce)
        report(scheduler, uce, 1, 0.9)
    salun = trial("salun")
    scheduler.on_trial_add(None, salun)
    return report(scheduler, salun, 1, 0.3)


def test_one_asha_for_all_algorithms_stops_the_slow_starter():
    shared = ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode="max", max_t=6, grace_period=1,
                           reduction_factor=2)
    assert finished_uce_then_a_slow_start(shared) == TrialScheduler.STOP


def test_per_algorithm_asha_compares_the_slow_starter_with_its_own_kind():
    scheduler = PerAlgorithmASHA(METRIC, "max", {"uce": 1, "salun": 6}, grace_period=1, reduction_factor=2)
    assert finished_uce_then_a_slow_start(scheduler) == TrialScheduler.CONTINUE


def test_per_algorithm_asha_still_stops_laggards_within_an_algorithm():
    scheduler = PerAlgorithmASHA(METRIC, "max", {"uce": 1, "salun": 6}, grace_period=1, reduction_factor=2)
    for score in (0.8, 0.85, 0.9, 0.95):
        leader = trial("salun")
        scheduler.on_trial_add(None, leader)
        assert report(scheduler, leader, 1, score) == TrialScheduler.CONTINUE
    laggard = trial("salun")
    scheduler.on_trial_add(None, laggard)
    assert report(scheduler, laggard, 1, 0.1) == TrialScheduler.STOP
    assert scheduler.stopped == {"salun": 1} and "salun" in scheduler.debug_string()


def test_each_algorithm_gets_its_own_max_t_and_survives_pickling():
    scheduler = PerAlgorithmASHA(METRIC, "max", {"uce": 1, "salun": 6}, grace_period=1, reduction_factor=2)
    finished_uce_then_a_slow_start(scheduler)
    restored = pickle.loads(pickle.dumps(scheduler))  # what Tuner.restore does with tuner.pkl
    assert restored.by_algorithm["uce"]._max_t == 1 and restored.by_algorithm["salun"]._max_t == 6
    assert set(restored.by_algorithm) == {"uce", "salun"}
    # A metric passed to TuneConfig as well would be ignored silently; refuse it, as Ray's ASHA does.
    assert restored.set_search_properties(None, None) is True
    assert restored.set_search_properties("other", "min") is False


@pytest.mark.parametrize("name, expected", [
    ("compare.yaml", PerAlgorithmASHA), ("salun.yaml", ASHAScheduler), ("uce.yaml", FIFOScheduler)])
def test_make_scheduler_picks_per_algorithm_asha_for_several_algorithms(name, expected):
    scheduler = make_scheduler(load_sweep(SWEEPS / name))
    assert type(scheduler) is expected
    if expected is PerAlgorithmASHA:  # compare.yaml: 150 steps every 25 -> 6 reports; UCE's one step -> 1
        assert scheduler.max_t_by_algorithm == {"esd": 6, "salun": 6, "uce": 1, "ca": 6, "erasediff": 6,
                                                "rece": 1, "concept-prune": 1, "fmn": 6, "mace": 6, "sdd": 6}


@pytest.mark.slow
def test_a_sweep_over_two_algorithms_runs_under_per_algorithm_asha(ray_session, tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(textwrap.dedent("""
        name: mixed-tiny
        model: world
        target: hazard
        algorithm: [uce, esd]
        params:
          esd: {lr: {loguniform: [1.0e-4, 3.0e-2]}, steps: 4, ddim_steps: 4, batch_size: 2}
          uce: {lamb: {loguniform: [0.01, 10.0]}}
        search: {sampler: tpe, num_samples: 4, max_concurrent: 2, seed: 0}
        objectives: {forgetting: max, preservation: max}
        early_stop: {scheduler: asha, grace_period: 1, reduction_factor: 2, eval_every: 2}
        resources: {cpu: 1}
        eval: {held_out: none}
    """))
    config = load_sweep(path)
    assert isinstance(make_scheduler(config), PerAlgorithmASHA)
    outcome = run_sweep(config, storage=str(tmp_path / "results"), verbose=0,
                        extra_settings={"budget_sizes": TINY_BUDGETS})
    statuses = [row["status"] for row in outcome.rows]
    assert len(statuses) == 4 and "error" not in statuses
    assert {row["algorithm"] for row in outcome.rows} <= {"uce", "esd"}
    assert all(row["status"] == "finished" for row in outcome.rows if row["algorithm"] == "uce")
