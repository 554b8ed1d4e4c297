"""Early stopping (igmu/sweep/schedulers.py): in a sweep over several algorithms a trial is ranked only
against its own algorithm, and MO-ASHA promotes by non-dominated sorting on the objectives. Unit
checks with Ray's real ASHA and MO-ASHA on stub trials, then real sweeps."""

import math
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from test_sweep import TINY_BUDGETS

from igmu.sweep import engine
from igmu.sweep.engine import make_scheduler, run_sweep
from igmu.sweep.file import load_sweep
from igmu.sweep.results import EARLY_STOPPED, FINISHED
from igmu.sweep.schedulers import (
    MOASHA,
    PerAlgorithmASHA,
    PerAlgorithmMOASHA,
    continues_at_rung,
    crowding_distance,
    milestones,
)

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
    ("compare.yaml", PerAlgorithmASHA), ("esd.yaml", ASHAScheduler), ("salun.yaml", MOASHA),
    ("uce.yaml", FIFOScheduler)])
def test_make_scheduler_picks_per_algorithm_asha_for_several_algorithms(name, expected):
    config = load_sweep(SWEEPS / name)
    scheduler = make_scheduler(config)
    assert type(scheduler) is expected
    if expected is PerAlgorithmASHA:  # compare.yaml: 150 steps every 25 -> 6 reports; one-step methods -> 1
        assert scheduler.max_t_by_algorithm == {algorithm: space.params["steps"] // 25 if "steps" in space.params else 1
                                                for algorithm, space in config.algorithms.items()}
        assert scheduler.max_t_by_algorithm["esd"] == 6 and scheduler.max_t_by_algorithm["uce"] == 1


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


# --- MO-ASHA ------------------------------------------------------------------------------------

OBJECTIVES = {"forgetting": "max", "preservation": "max"}
CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def report_scores(scheduler, each: Trial, iteration: int, *scores: float) -> str:
    """A report carrying every objective (in OBJECTIVES' order, then `quality` if a third score is given)."""
    names = [*OBJECTIVES, "quality"][:len(scores)]
    return scheduler.on_trial_result(None, each, {"training_iteration": iteration, **dict(zip(names, scores))})


def decisions_at_first_rung(scheduler, vectors, algorithm: str = "salun") -> list[str]:
    """One new trial per vector, each reporting it at the first rung in turn."""
    decisions = []
    for vector in vectors:
        each = trial(algorithm)
        scheduler.on_trial_add(None, each)
        decisions.append(report_scores(scheduler, each, 1, *vector))
    return decisions


def test_rungs_are_asha_milestones_below_max_t():
    assert milestones(4, 1, 2) == [1, 2]  # salun.yaml: 100 steps, a report every 25
    assert milestones(6, 1, 2) == [1, 2, 4]
    assert milestones(27, 1, 3) == [1, 3, 9]
    assert milestones(1, 1, 2) == [] and milestones(3, 5, 2) == []


def test_a_trial_alone_continues_and_a_dominated_one_stops():
    scheduler = MOASHA(OBJECTIVES, max_t=4, grace_period=1, reduction_factor=2)
    assert decisions_at_first_rung(scheduler, [(0.9, 0.9), (0.5, 0.5)]) == [CONTINUE, STOP]
    assert list(scheduler.stopped_at.values()) == [1] and "num_stopped=1" in scheduler.debug_string()


def test_a_trade_off_low_on_one_objective_continues_where_scalar_asha_stops_it():
    scheduler = MOASHA(OBJECTIVES, max_t=4, grace_period=1, reduction_factor=2)
    assert decisions_at_first_rung(scheduler, [(0.9, 0.9), (0.1, 0.95)]) == [CONTINUE, CONTINUE]
    scalar = ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode="max", max_t=4, grace_period=1,
                           reduction_factor=2)
    hmean = [2 * f * p / (f + p) for f, p in [(0.9, 0.9), (0.1, 0.95)]]
    for score, expected in zip(hmean, [CONTINUE, STOP]):
        each = trial("salun")
        scalar.on_trial_add(None, each)
        assert report(scalar, each, 1, score) == expected


def test_a_dominated_trial_continues_within_the_best_n_over_reduction_factor():
    scheduler = MOASHA(OBJECTIVES, max_t=4, grace_period=1, reduction_factor=2)
    vectors = [(0.9, 0.9), (0.1, 0.1), (0.05, 0.05), (0.5, 0.5), (0.3, 0.3), (0.2, 0.2)]
    # n recorded (itself included) -> the best ceil(n/2) go on: the 4th is 2nd of 4, the 5th 3rd of 5,
    # the 6th 4th of 6.
    assert decisions_at_first_rung(scheduler, vectors) == [CONTINUE, STOP, STOP, CONTINUE, CONTINUE, STOP]


def test_crowding_distance_breaks_ties_within_a_level():
    assert crowding_distance(np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])).tolist() == [math.inf, 2.0, math.inf]
    copies = crowding_distance(np.array([[0.0, 1.0], [0.5, 0.5], [0.5, 0.5], [1.0, 0.0]]))
    assert copies[1] == copies[2]  # the order trials arrive in cannot split copies of a point
    # (1, 1) alone on the first level; the candidate shares the second level with two others, and
    # 2 of 4 go on: from the crowded middle of the trade-off it stops, from an end of it it continues.
    others = [(1.0, 1.0), (0.9, 0.1), (0.1, 0.9)]
    assert not continues_at_rung(np.array([*others, (0.5, 0.5)]), 3, [True, True], 2)
    assert continues_at_rung(np.array([*others, (0.95, 0.05)]), 3, [True, True], 2)


def test_directions_follow_the_objectives():
    scheduler = MOASHA({"forgetting": "max", "efficiency_seconds": "min"}, max_t=4, grace_period=1,
                       reduction_factor=2)
    first, slower, faster = trial("salun"), trial("salun"), trial("salun")
    for each in (first, slower, faster):
        scheduler.on_trial_add(None, each)
    result = {"training_iteration": 1}
    assert scheduler.on_trial_result(None, first, {**result, "forgetting": 0.5, "efficiency_seconds": 10.0}) \
        == CONTINUE
    assert scheduler.on_trial_result(None, slower, {**result, "forgetting": 0.5, "efficiency_seconds": 20.0}) \
        == STOP
    assert scheduler.on_trial_result(None, faster, {**result, "forgetting": 0.5, "efficiency_seconds": 5.0}) \
        == CONTINUE


def test_an_objective_no_interim_evaluation_measured_is_left_out():
    scheduler = MOASHA({**OBJECTIVES, "quality": "max"}, max_t=4, grace_period=1, reduction_factor=2)
    # Without the rule every vector would hold a NaN, none could be compared, and nothing would stop.
    assert decisions_at_first_rung(scheduler, [(0.9, 0.9, math.nan), (0.5, 0.5, math.nan)]) == [CONTINUE, STOP]


def test_a_vector_missing_a_measured_objective_ranks_after_every_complete_one():
    scheduler = MOASHA(OBJECTIVES, max_t=4, grace_period=1, reduction_factor=2)
    # The second: 1 of 2 goes on, and a complete vector is ahead of it. The third: 2 of 3 go on, only
    # the complete one is ahead (incomplete vectors are not compared, so they tie).
    assert decisions_at_first_rung(scheduler, [(0.9, 0.9), (math.nan, 0.95), (math.nan, 0.1)]) == \
        [CONTINUE, STOP, CONTINUE]


def test_nothing_measured_at_a_rung_stops_no_one():
    scheduler = MOASHA(OBJECTIVES, max_t=4, grace_period=1, reduction_factor=2)
    assert decisions_at_first_rung(scheduler, [(math.nan, math.nan)] * 3) == [CONTINUE] * 3


def test_only_rung_reports_are_ranked_and_a_report_at_max_t_stops():
    scheduler = MOASHA(OBJECTIVES, max_t=8, grace_period=1, reduction_factor=2)  # rungs 1, 2, 4
    leader, laggard = trial("salun"), trial("salun")
    for each in (leader, laggard):
        scheduler.on_trial_add(None, each)
    for iteration in (1, 2, 3):
        assert report_scores(scheduler, leader, iteration, 0.9, 0.9) == CONTINUE
    assert report_scores(scheduler, laggard, 1, 0.1, 0.95) == CONTINUE  # a trade-off at rung 1
    assert report_scores(scheduler, laggard, 2, 0.1, 0.1) == STOP  # dominated at rung 2
    assert {milestone: len(recorded) for milestone, recorded in scheduler.rungs.items()} == {1: 2, 2: 2, 4: 0}
    assert report_scores(scheduler, leader, 3, 0.9, 0.9) == CONTINUE  # between rungs, and rung 2 is done
    assert report_scores(scheduler, leader, 8, 0.9, 0.9) == STOP
    assert scheduler.stopped_at == {laggard.trial_id: 2}


def test_per_algorithm_mo_asha_ranks_a_trial_only_against_its_own_algorithm():
    shared = MOASHA(OBJECTIVES, max_t=6, grace_period=1, reduction_factor=2)
    assert decisions_at_first_rung(shared, [(0.9, 0.9)] * 4 + [(0.3, 0.3)])[-1] == STOP
    scheduler = PerAlgorithmMOASHA(OBJECTIVES, {"uce": 1, "salun": 6}, grace_period=1, reduction_factor=2)
    assert decisions_at_first_rung(scheduler, [(0.9, 0.9)] * 4, "uce") == [STOP] * 4  # UCE's finished models
    assert decisions_at_first_rung(scheduler, [(0.3, 0.3), (0.2, 0.2)], "salun") == [CONTINUE, STOP]
    assert scheduler.stopped == {"uce": 4, "salun": 1} and "MO-ASHA per algorithm" in scheduler.debug_string()


def test_mo_asha_survives_pickling_and_decides_the_same_after():
    scheduler = PerAlgorithmMOASHA(OBJECTIVES, {"uce": 1, "salun": 6}, grace_period=1, reduction_factor=2)
    decisions_at_first_rung(scheduler, [(0.9, 0.9)], "uce")
    decisions_at_first_rung(scheduler, [(0.9, 0.9), (0.3, 0.95)], "salun")
    restored = pickle.loads(pickle.dumps(scheduler))  # what Tuner.restore does with tuner.pkl
    assert set(restored.by_algorithm) == {"uce", "salun"}
    assert restored.by_algorithm["uce"].max_t == 1 and restored.by_algorithm["salun"].max_t == 6
    assert restored.by_algorithm["salun"].rungs == scheduler.by_algorithm["salun"].rungs
    assert decisions_at_first_rung(restored, [(0.5, 0.5)], "salun") == [STOP]
    assert restored.set_search_properties(None, None) is True
    assert restored.set_search_properties("other", "min") is False
    alone = pickle.loads(pickle.dumps(restored.by_algorithm["salun"]))
    assert alone.set_search_properties(None, None) is True and alone.set_search_properties(METRIC, "max") is False


def mo_asha_sweep(folder: Path, algorithm: str, params: str, search: str) -> Path:
    path = folder / "mo-asha.yaml"
    path.write_text(textwrap.dedent(f"""
        name: mo-asha-tiny
        model: world
        target: hazard
        algorithm: {algorithm}
        params: {params}
        search: {search}
        objectives: {{forgetting: max, preservation: max}}
        early_stop: {{scheduler: mo-asha, grace_period: 1, reduction_factor: 2, eval_every: 2}}
        resources: {{cpu: 1}}
        eval: {{held_out: none}}
    """))
    return path


ESD = "{lr: {loguniform: [1.0e-4, 3.0e-2]}, steps: 6, ddim_steps: 4, batch_size: 2}"
TPE = "{sampler: tpe, num_samples: 4, max_concurrent: 2, seed: 0}"


def test_make_scheduler_picks_mo_asha_and_one_per_algorithm_for_several(tmp_path):
    single = make_scheduler(load_sweep(mo_asha_sweep(tmp_path, "esd", ESD, TPE)))
    assert type(single) is MOASHA and single.objectives == list(OBJECTIVES)
    assert single.max_t == 3 and list(single.rungs) == [1, 2]  # 6 steps, a report every 2
    several = make_scheduler(load_sweep(mo_asha_sweep(tmp_path, "[uce, esd]", f"{{esd: {ESD}, uce: {{lamb: 1.0}}}}",
                                                      TPE)))
    assert type(several) is PerAlgorithmMOASHA and several.max_t_by_algorithm == {"uce": 1, "esd": 3}


@pytest.mark.slow
def test_a_sweep_under_mo_asha_keeps_the_trade_off_and_stops_the_dominated(ray_session, tmp_path, monkeypatch):
    """Three ESD learning rates, one trial at a time in grid order so they reach the rung in a known
    order. At the rung (2 of 4 steps) on the world model: 1e-2 forgets most; 3e-3 forgets less but
    preserves more, a trade-off that ASHA on the harmonic mean would stop; 3e-2 is worse on both."""
    esd = "{lr: {grid: [1.0e-2, 3.0e-3, 3.0e-2]}, steps: 4, ddim_steps: 4, batch_size: 2}"
    config = load_sweep(mo_asha_sweep(tmp_path, "esd", esd, "{sampler: grid, num_samples: 1, max_concurrent: 1}"))
    made = []  # the scheduler the sweep runs with, kept to compare its decisions with the results

    def make_and_keep(sweep):
        made.append(make_scheduler(sweep))
        return made[-1]

    monkeypatch.setattr(engine, "make_scheduler", make_and_keep)
    outcome = run_sweep(config, storage=str(tmp_path / "results"), verbose=0,
                        extra_settings={"budget_sizes": TINY_BUDGETS})
    scheduler, = made
    rows = {row["param_lr"]: row for row in outcome.rows}
    assert {lr: (row["status"], row["steps"]) for lr, row in rows.items()} == {
        1e-2: (FINISHED, 4), 3e-3: (FINISHED, 4), 3e-2: (EARLY_STOPPED, 2)}
    assert scheduler.stopped_at == {rows[3e-2]["trial_id"]: 1}  # the scheduler's one rung decision is the result
    at_rung = {lr: scheduler.rungs[1][row["trial_id"]] for lr, row in rows.items()}
    assert at_rung[3e-3][0] < at_rung[1e-2][0] and at_rung[3e-3][1] > at_rung[1e-2][1]  # a trade-off...
    hmean = {lr: 2 * f * p / (f + p) for lr, (f, p) in at_rung.items()}
    assert hmean[3e-3] < hmean[1e-2]  # ... that ASHA on the harmonic mean (2nd of 2 at the rung) would stop
    assert all(np.less(at_rung[3e-2], at_rung[1e-2]))  # dominated: stopped
