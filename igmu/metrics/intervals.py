"""95% intervals for the scorecard's scores: exact (Clopper-Pearson) for a score that is one rate, a
percentile bootstrap over prompts (their images) for every other score.

The bootstrap draws its resamples from a generator with a fixed seed, and every draw depends only on
the sizes of the sets resampled, so one evaluation always gets the same interval, bit for bit, as it
gets the same score: re-scoring a run's images reproduces both.

A bootstrap statistic is computed for all resamples at once from `counts`: per set resampled, a
[resamples, set size] tensor saying how often each item was drawn. A mean over a resample is then a
weighted mean (`counts @ values / size`), with no per-resample Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

CONFIDENCE = 0.95
# 1000 resamples: the usual floor for percentile intervals (Efron & Tibshirani, ch. 13), where the
# 2.5% and 97.5% ends rest on 25 resamples each, and cheap enough: on `igmu eval --model base --target
# ball --budget full` (CPU, 2 shared cores) every interval together took 7 s of 332 s (2.2%), nearly
# all of it quality's Frechet distances (docs/metrics.md, "Intervals").
BOOTSTRAP_RESAMPLES = 1000
# Fixed, and independent of the evaluation's seed: the interval is a function of the scored images only.
BOOTSTRAP_SEED = 20_240_601

Interval = tuple[float, float]
# counts per resampled set -> the score of each resample, [resamples]
Statistic = Callable[..., torch.Tensor]


def exact_rate_interval(hits: int, n: int, confidence: float = CONFIDENCE) -> Interval | None:
    """Clopper-Pearson interval of a rate of `hits` in `n`: the beta quantiles that bound every
    binomial rate the count is compatible with. None for an empty sample (no rate to bound)."""
    if n <= 0:
        return None
    from scipy.stats import beta  # imported on use: scipy is slow to import and most commands never score

    tail = (1.0 - confidence) / 2
    low = 0.0 if hits <= 0 else float(beta.ppf(tail, hits, n - hits + 1))
    high = 1.0 if hits >= n else float(beta.ppf(1.0 - tail, hits + 1, n - hits))
    return low, high


def one_minus(interval: Interval | None) -> Interval | None:
    """The interval of 1 - x, from the interval of x (a residual rate's, for a forgetting score)."""
    return None if interval is None else (1.0 - interval[1], 1.0 - interval[0])


def resample_counts(sizes: Sequence[int], resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> list[torch.Tensor]:
    """Per set size, how often each item is drawn in each resample ([resamples, size], float64):
    `size` draws with replacement per resample. An empty set has empty counts."""
    generator = torch.Generator().manual_seed(seed)
    counts = []
    for size in sizes:
        drawn = torch.zeros(resamples, size, dtype=torch.float64)
        if size > 0:
            index = torch.randint(size, (resamples, size), generator=generator)
            drawn.scatter_add_(1, index, torch.ones(resamples, size, dtype=torch.float64))
        counts.append(drawn)
    return counts


def bootstrap_interval(statistic: Statistic, sizes: Sequence[int], confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval | None:
    """Percentile bootstrap interval of `statistic` over sets of `sizes`, each resampled on its own.

    Resamples whose statistic is undefined (NaN, e.g. no check left to pass) are left out; when more
    than one tail's share of them is, the interval's ends would rest on them, so there is none."""
    values = torch.as_tensor(statistic(*resample_counts(sizes, resamples, seed)), dtype=torch.float64).cpu()
    return percentile_interval(values, confidence)


def percentile_interval(values: torch.Tensor, confidence: float = CONFIDENCE) -> Interval | None:
    """The central `confidence` share of the resamples' statistics (see `bootstrap_interval` for NaN)."""
    tail = (1.0 - confidence) / 2
    finite = values[torch.isfinite(values)]
    if len(finite) == 0 or len(values) - len(finite) > tail * len(values):
        return None
    ends = torch.quantile(finite, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    # Interpolating between two resamples can round one ulp past both; an end stays within the data.
    ends = ends.clamp(float(finite.min()), float(finite.max()))
    return float(ends[0]), float(ends[1])


def weighted_rate(counts: torch.Tensor, passed: torch.Tensor, checked: torch.Tensor) -> torch.Tensor:
    """Per resample, checks passed over checks made, where item i made `checked[i]` checks and passed
    `passed[i]` of them; NaN where a resample made none (as the rate of an empty list is)."""
    passed, checked = passed.to(counts), checked.to(counts)
    return (counts @ passed) / (counts @ checked)


def weighted_mean(counts: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per resample, the mean of per-item values; NaN for an empty set."""
    if counts.shape[1] == 0:
        return torch.full((counts.shape[0],), math.nan, dtype=counts.dtype)
    return counts @ values.to(counts) / counts.shape[1]


def mean_of_known(*parts: torch.Tensor) -> torch.Tensor:
    """Per resample, the mean of the parts that are defined: the scores' own rule for a part that is
    NaN (e.g. no related prompts)."""
    return torch.stack(parts).nanmean(0)


def tallies(checks: Sequence[tuple[int, bool]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(checks passed, checks made) per item, from (item index, passed) pairs: an item can carry
    several checks (several judges) or none."""
    passed, checked = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    for index, hit in checks:
        passed[index] += float(hit)
        checked[index] += 1.0
    return passed, checked
