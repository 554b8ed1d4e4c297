"""95% intervals: the exact interval of a rate, the seeded bootstrap, the resampled Frechet distance,
and intervals on every aspect of a world scorecard, in the sweep's reports and its results table."""

import json
import math

import pytest
import torch

from igmu.metrics.base import ASPECTS, MetricResult
from igmu.metrics.frechet import frechet_distance, resampled_frechet
from igmu.metrics.intervals import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_interval,
    exact_rate_interval,
    one_minus,
    resample_counts,
    tallies,
    weighted_mean,
    weighted_rate,
)

# Every set of a full world evaluation, shrunk so a test scores all five aspects in seconds.
TINY_FULL = {"full": {"forget": 4, "retain": 4, "related": 2, "paraphrase": 2, "attack_prompts": 1,
                      "attack_steps": 1}}


def width(interval) -> float:
    return interval[1] - interval[0]


def mean_interval(values: torch.Tensor, **options):
    values = values.double()
    return bootstrap_interval(lambda counts: weighted_mean(counts, values), (len(values),), **options)


# --- the exact interval of a rate ------------------------------------------------------------------

def test_exact_interval_matches_known_values():
    # k = 0 and k = n have closed forms: the one open end is (alpha/2)^(1/n) from the other end.
    low, high = exact_rate_interval(0, 48)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 48), rel=1e-9) and high == pytest.approx(0.0740, abs=1e-4)
    low, high = exact_rate_interval(48, 48)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 48), rel=1e-9)
    # Published Clopper-Pearson values (e.g. Brown, Cai & DasGupta 2001): 5 of 10, 1 of 10.
    assert exact_rate_interval(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)
    assert exact_rate_interval(1, 10) == pytest.approx((0.0025, 0.4450), abs=1e-4)
    assert exact_rate_interval(0, 0) is None


def test_a_forgetting_score_gets_the_residual_rate_interval_turned_around():
    assert one_minus(exact_rate_interval(0, 48)) == pytest.approx((1 - 0.0740, 1.0), abs=1e-4)
    assert one_minus(None) is None


def test_exact_intervals_shrink_with_n():
    widths = [width(exact_rate_interval(n // 4, n)) for n in (8, 32, 128, 512)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4


# --- the bootstrap --------------------------------------------------------------------------------

def test_bootstrap_is_seeded_so_it_repeats_bit_for_bit_and_brackets_the_estimate():
    values = (torch.arange(60) % 10 < 3).double()  # a rate of 0.3
    first, again = mean_interval(values), mean_interval(values)
    assert first == again  # the same floats, not merely close
    assert first[0] < 0.3 < first[1]
    # About the normal approximation 0.3 +- 1.96 sqrt(0.3 * 0.7 / 60) = +- 0.116.
    assert first == pytest.approx((0.3 - 0.116, 0.3 + 0.116), abs=0.03)
    # The fixed seed, not luck, makes it repeat: another seed moves the ends of a continuous statistic.
    spread_out = torch.linspace(0, 1, 60) ** 2
    assert mean_interval(spread_out) == mean_interval(spread_out) != mean_interval(spread_out, seed=1)


def test_bootstrap_intervals_shrink_with_n():
    widths = [width(mean_interval((torch.arange(n) % 4 == 0).double())) for n in (8, 32, 128, 512)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4


def test_resample_counts_draw_each_set_size_with_replacement():
    counts = resample_counts((5, 0, 3), resamples=7)
    assert [tuple(c.shape) for c in counts] == [(7, 5), (7, 0), (7, 3)]
    assert counts[0].sum(1).tolist() == [5.0] * 7 and counts[2].sum(1).tolist() == [3.0] * 7


def test_undefined_resamples_give_no_interval_once_they_could_move_an_end():
    def undefined_in(share):
        def statistic(counts):
            values = counts[:, 0].clone()
            values[: int(share * len(values))] = math.nan
            return values
        return bootstrap_interval(statistic, (10,))

    assert undefined_in(0.01) is not None
    assert undefined_in(0.10) is None
    assert mean_interval(torch.zeros(0)) is None  # an empty set: nothing to resample, no crash


def test_tallies_and_weighted_rates_count_checks_per_item():
    passed, checked = tallies([(0, True), (0, False), (2, True)], 3)
    assert passed.tolist() == [1.0, 0.0, 1.0] and checked.tolist() == [2.0, 0.0, 1.0]
    counts = torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    rates = weighted_rate(counts, passed, checked)
    assert rates[0] == pytest.approx(2 / 3) and math.isnan(rates[1])  # no check drawn: undefined


def test_resampled_frechet_equals_frechet_of_the_resampled_sets():
    torch.manual_seed(0)
    for n, dim in ((24, 16), (12, 40), (2, 3)):  # fewer images than dimensions too, as the judges have
        a, b = torch.randn(n, dim), 1.3 * torch.randn(n, dim) + 0.2
        counts = resample_counts((n,), resamples=20)[0]
        distances, variances = resampled_frechet(a, b, counts)
        for r in range(20):
            drawn = torch.repeat_interleave(torch.arange(n), counts[r].long())
            assert float(distances[r]) == pytest.approx(frechet_distance(a[drawn], b[drawn]), rel=1e-7, abs=1e-9)
            assert float(variances[r]) == pytest.approx(float(torch.cov(b[drawn].double().T).trace()), rel=1e-9)
    one = resampled_frechet(torch.randn(1, 4), torch.randn(1, 4), torch.ones(5, 1))[0]
    assert torch.isnan(one).all()  # no covariance from one image: undefined, not a crash


# --- the result shape -----------------------------------------------------------------------------

def test_metric_result_emits_its_interval_rounded_like_the_score():
    result = MetricResult(0.5, {"n_images": 3}, (0.1234567891, 0.9))
    assert result.to_json() == {"score": 0.5, "interval": [0.123457, 0.9], "n_images": 3}
    assert "interval" not in MetricResult(0.5).to_json()
    assert MetricResult(math.nan, {}, (0.1, 0.2)).interval is None  # an undefined score has no interval
    with pytest.raises(ValueError, match="interval"):
        MetricResult(0.5, {}, (0.6, 0.4))


# --- scorecards (slow: they sample images with the world model) -----------------------------------

@pytest.fixture(scope="module")
def tiny_world_card(world_generator, judges):
    from igmu.metrics.scorecard import build_context, scorecard

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IGMU_BUDGET_SIZES", json.dumps(TINY_FULL))
        ctx = build_context(world_generator, "ball", "full", original=world_generator, judges=judges)
    return scorecard(ctx), scorecard(ctx)


@pytest.mark.slow
def test_every_aspect_of_a_world_full_budget_scorecard_has_an_interval(tiny_world_card):
    card, _ = tiny_world_card
    assert list(card["aspects"]) == list(ASPECTS)
    for aspect, result in card["aspects"].items():
        low, high = result["interval"]
        assert 0.0 <= low <= result["score"] <= high <= 1.0, (aspect, result)
    assert card["aspects"]["forgetting"]["interval"] == pytest.approx(
        list(one_minus(exact_rate_interval(round(4 * card["aspects"]["forgetting"]["residual_rate"]), 4))), abs=1e-6)
    quality = card["aspects"]["quality"]
    assert {"kid_retain", "kid_concept_removed", "kid_noise_floor_retain", "kid_noise_floor_concept_removed"} <= set(quality)
    assert quality["n_images"] == {"retain": 4, "concept_removed": 4}


@pytest.mark.slow
def test_scoring_again_reproduces_every_interval(tiny_world_card):
    card, again = tiny_world_card
    assert {a: r["interval"] for a, r in card["aspects"].items()} == {a: r["interval"] for a, r in again["aspects"].items()}


@pytest.mark.slow
def test_the_table_prints_the_interval_beside_the_score(tiny_world_card):
    from igmu.metrics.scorecard import format_table

    card, _ = tiny_world_card
    line = next(line for line in format_table(card).splitlines() if line.strip().startswith("forgetting"))
    low, high = card["aspects"]["forgetting"]["interval"]
    assert f"{card['aspects']['forgetting']['score']:.3f} [{low:.2f}, {high:.2f}]" in line


@pytest.mark.slow
def test_image_to_image_quality_gets_an_interval(judges):
    from igmu.metrics.context import Budget
    from igmu.metrics.scorecard import build_context, scorecard
    from igmu.models.image_to_image import WorldImageToImage

    model = WorldImageToImage.load_shipped(device="cpu")
    card = scorecard(build_context(model, "ball", Budget("full", forget=4, retain=6, related=0, paraphrase=0),
                                   original=model, judges=judges))
    # The generator against itself: every resample sees identical completions, so each interval is a point.
    assert card["aspects"]["forgetting"]["interval"] == [0.0, 0.0]
    assert card["aspects"]["preservation"]["interval"] == [1.0, 1.0]
    assert card["aspects"]["quality"]["interval"] == [1.0, 1.0]


# --- the sweep's reports and results table ------------------------------------------------------

@pytest.mark.slow
def test_reports_and_table_rows_carry_each_interval(tiny_world_card):
    from igmu.sweep.results import EARLY_STOPPED, FINISHED, INTERVAL_COLUMNS, interval_keys, trial_row
    from igmu.sweep.trainable import _metrics

    card, _ = tiny_world_card
    reported = _metrics(card, step=4, final=True)
    for aspect, result in card["aspects"].items():
        assert [reported[key] for key in interval_keys(aspect)] == result["interval"]
    row = trial_row("t1", "esd", {"lr": 1e-3}, FINISHED, reported, None)
    assert all(row[f"val_{key}"] == reported[key] for key in INTERVAL_COLUMNS)  # trials score validation
    assert all(math.isnan(row[f"test_{key}"]) for key in INTERVAL_COLUMNS)  # the held-out stage fills these
    stopped = trial_row("t2", "esd", {"lr": 1e-3}, EARLY_STOPPED, reported, None)
    assert all(math.isnan(stopped[f"val_{key}"]) for key in INTERVAL_COLUMNS)  # interim intervals never count
    interim = _metrics({"aspects": {"forgetting": {"score": 0.5}}}, step=2, final=False)
    assert not any(key in interim for key in INTERVAL_COLUMNS)  # no interval, no key


def test_a_table_written_before_intervals_still_loads(tmp_path):
    import pandas as pd

    from igmu.sweep.results import INTERVAL_COLUMNS, SweepSource, load_sweep_table

    path = tmp_path / "results.parquet"
    pd.DataFrame([{"trial_id": "t1", "algorithm": "esd", "status": "finished", "forgetting": 0.5}]).to_parquet(path)
    table = load_sweep_table(SweepSource("old", path, tmp_path))
    assert list(table["forgetting"]) == [0.5] and not set(INTERVAL_COLUMNS) & set(table.columns)


def test_the_resample_count_is_the_documented_one():
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    assert f"{BOOTSTRAP_RESAMPLES} resamples" in docs
