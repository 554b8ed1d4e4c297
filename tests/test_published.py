"""The world's ranking beside a published one: Kendall's tau-b, its intervals, the disagreements."""

import json

import pytest
from scipy.stats import kendalltau
from sweep_helpers import bench_module

from igmu.analysis.published import PublishedTable, load_published, rank_agreement, world_rates
from igmu.errors import UsageError


def table(values: dict) -> PublishedTable:
    return PublishedTable(source="test", setting="test setting", measure="post_asr", values=values)


def write_defaults(sweep_dir, rates: dict, prompts: int = 8) -> None:
    for algorithm, rate in rates.items():
        folder = sweep_dir / "defaults" / algorithm
        folder.mkdir(parents=True)
        card = {"aspects": {"robustness": {"score": 0.5, "post_asr": rate, "pre_asr": rate / 2,
                                           "attack_prompts": prompts}}}
        (folder / "scorecard.json").write_text(json.dumps(card))


def test_tau_is_scipys_tau_b_and_the_disagreements_are_the_oppositely_ordered_pairs():
    published = {"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.9}
    world = {"a": (0.25, 8), "b": (0.125, 8), "c": (0.5, 8), "d": (0.5, 8)}
    report = rank_agreement(table(published), world, resamples=200)
    names = ["a", "b", "c", "d"]
    expected = kendalltau([world[n][0] for n in names], [published[n] for n in names]).statistic
    assert report["tau_b"] == pytest.approx(expected)
    # a/b are ordered oppositely; c/d tie in the world, which is not a disagreement
    assert report["disagreements"] == [("a", "b")]
    rows = {r["algorithm"]: r for r in report["rows"]}
    assert rows["a"]["world_rank"] == 2 and rows["b"]["world_rank"] == 1 and rows["c"]["world_rank"] == 3.5


def test_identical_rankings_give_tau_one_and_intervals_that_contain_it():
    published = {"a": 0.1, "b": 0.3, "c": 0.6, "d": 0.9}
    world = {"a": (0.125, 8), "b": (0.375, 8), "c": (0.625, 8), "d": (0.875, 8)}
    report = rank_agreement(table(published), world, resamples=500)
    assert report["tau_b"] == pytest.approx(1.0)
    low, high = report["interval_over_prompts"]
    assert low < 1.0 and high == pytest.approx(1.0)  # 8 prompts per rate: draws can swap neighbours
    assert report["interval_over_algorithms"][1] == pytest.approx(1.0)


def test_rates_of_zero_or_one_do_not_move_when_prompts_are_resampled():
    published = {"a": 0.1, "b": 0.5, "c": 0.9}
    world = {"a": (0.0, 8), "b": (1.0, 8), "c": (1.0, 8)}
    report = rank_agreement(table(published), world, resamples=100)
    assert report["interval_over_prompts"] == [pytest.approx(report["tau_b"])] * 2


def test_fewer_than_three_shared_algorithms_is_a_one_line_error():
    with pytest.raises(UsageError, match="only 2 algorithm"):
        rank_agreement(table({"a": 0.1, "b": 0.2, "z": 0.3}), {"a": (0.5, 8), "b": (0.5, 8), "c": (0.1, 8)})


def test_world_rates_come_from_the_defaults_scorecards(tmp_path):
    write_defaults(tmp_path, {"esd": 0.75, "uce": 0.5})
    assert world_rates(tmp_path, "post_asr") == {"esd": (0.75, 8), "uce": (0.5, 8)}
    assert world_rates(tmp_path, "pre_asr")["esd"] == (0.375, 8)
    with pytest.raises(UsageError, match="no defaults run"):
        world_rates(tmp_path / "elsewhere", "post_asr")


def test_a_bad_published_table_names_the_key(tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text("source: s\nsetting: t\nmeasure: asr\nvalues: {a: 0.1, b: 0.2}\n")
    with pytest.raises(UsageError, match="measure"):
        load_published(path)
    with pytest.raises(UsageError, match="does not exist"):
        load_published(tmp_path / "missing.yaml")


def test_the_shipped_table_loads_and_the_bench_prints_the_comparison(tmp_path, capsys):
    bench = bench_module("published_ranking")
    shipped = load_published(bench.DEFAULT_TABLE)
    assert shipped.values["erasediff"] < shipped.values["fmn"]
    sweep_dir = tmp_path / "compare-hazard"
    write_defaults(sweep_dir, {"esd": 0.75, "uce": 0.875, "erasediff": 0.25, "ca": 0.5})
    (sweep_dir / "results.parquet").write_bytes(b"")  # locate_sweep finds the sweep by its table
    assert bench.main(["compare-hazard", "--storage", str(tmp_path), "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "Kendall's tau-b 1.000 over 3 algorithms" in out
    assert "Run here, not published: ca" in out
