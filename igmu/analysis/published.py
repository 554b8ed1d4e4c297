"""How the world's ranking of algorithms agrees with a published one.

A published table (a YAML file: its source, the measure, lower or higher better, one value per
algorithm) is set beside the same measure read from a sweep's defaults runs, each algorithm once at
its published defaults and scored on the held-out test split. Agreement is Kendall's tau-b over the
algorithms both hold (tau-b, since both sides have ties), with two 95% bootstrap intervals:

- over algorithms: the usual case bootstrap of a rank correlation, algorithms drawn with
  replacement, which asks how much tau depends on which methods happen to be compared;
- over attack prompts: each world rate is a share of n attack prompts, so resampling those prompts
  draws it from Binomial(n, rate) / n, the published side taken as given; this asks how much tau
  depends on the world's few prompts. A rate of 0 or 1 does not move under it.

A draw in which either side ties everywhere has no tau and is left out of its interval.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.stats import kendalltau, rankdata

from igmu.errors import UsageError
from igmu.sweep.held_out import DEFAULTS_DIR

# Where each rate the world measures sits in a scorecard: aspect, its rate, its count of trials.
WORLD_RATES = {"post_asr": ("robustness", "post_asr", "attack_prompts"),
               "pre_asr": ("robustness", "pre_asr", "attack_prompts")}


class PublishedTable(BaseModel):
    """One published measure per algorithm (registry names)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    setting: str
    measure: Literal["post_asr", "pre_asr"]
    lower_is_better: bool = True
    values: dict[str, float] = Field(min_length=2)


def load_published(path: str | Path) -> PublishedTable:
    try:
        return PublishedTable.model_validate(yaml.safe_load(Path(path).read_text()))
    except FileNotFoundError:
        raise UsageError(f"published table {str(path)!r} does not exist") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise UsageError(f"published table {str(path)!r}: {where}: {first['msg']}") from None


def world_rates(sweep_dir: Path, measure: str) -> dict[str, tuple[float, int]]:
    """Each defaults run's rate and its count, from `defaults/<algorithm>/scorecard.json`."""
    aspect, rate_key, count_key = WORLD_RATES[measure]
    rates = {}
    for card_path in sorted((sweep_dir / DEFAULTS_DIR).glob("*/scorecard.json")):
        details = json.loads(card_path.read_text())["aspects"].get(aspect) or {}
        if rate_key in details:
            rates[card_path.parent.name] = (float(details[rate_key]), int(details[count_key]))
    if not rates:
        raise UsageError(f"{sweep_dir}: no defaults run has {measure!r}; run the sweep with eval.defaults: true "
                         "and the full budget")
    return rates


def ranks(values: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """Rank 1 = best; ties share their average rank."""
    return rankdata(values if lower_is_better else -values)


def percentile_interval(taus: list[float]) -> list[float] | None:
    finite = np.array(taus, dtype=float)
    finite = finite[np.isfinite(finite)]
    return [float(x) for x in np.percentile(finite, [2.5, 97.5])] if len(finite) else None


def tau_over_algorithms(world: np.ndarray, published: np.ndarray, resamples: int,
                        rng: np.random.Generator) -> list[float] | None:
    """Case bootstrap: algorithms drawn with replacement, tau-b of each draw."""
    picks = rng.integers(0, len(world), size=(resamples, len(world)))
    return percentile_interval([kendalltau(world[pick], published[pick]).statistic for pick in picks])


def tau_over_prompts(world: np.ndarray, counts: np.ndarray, published: np.ndarray, resamples: int,
                     rng: np.random.Generator) -> list[float] | None:
    """Each world rate redrawn from Binomial(n, rate) / n: its attack prompts resampled."""
    draws = rng.binomial(counts, world, size=(resamples, len(world))) / counts
    return percentile_interval([kendalltau(draw, published).statistic for draw in draws])


def disagreements(names: list[str], world: np.ndarray, published: np.ndarray) -> list[tuple[str, str]]:
    """Pairs the two sides order oppositely (ties on either side are not disagreements)."""
    return [(a, b) for (i, a), (j, b) in itertools.combinations(enumerate(names), 2)
            if (world[i] - world[j]) * (published[i] - published[j]) < 0]


def rank_agreement(table: PublishedTable, rates: dict[str, tuple[float, int]], resamples: int = 2000,
                   seed: int = 0) -> dict:
    """Kendall's tau-b between the world's and the published ranking, its interval, and the rows."""
    names = sorted(set(table.values) & set(rates), key=lambda name: table.values[name])
    if len(names) < 3:
        raise UsageError(f"only {len(names)} algorithm(s) in both the world's defaults runs ({', '.join(sorted(rates))}) "
                         f"and the published table ({', '.join(sorted(table.values))}); need 3")
    world = np.array([rates[name][0] for name in names])
    counts = np.array([rates[name][1] for name in names])
    published = np.array([table.values[name] for name in names])
    tau = kendalltau(world, published)
    rng = np.random.default_rng(seed)
    world_rank, published_rank = ranks(world, table.lower_is_better), ranks(published, table.lower_is_better)
    rows = [{"algorithm": name, "published": float(published[i]), "world": float(world[i]), "n": int(counts[i]),
             "published_rank": float(published_rank[i]), "world_rank": float(world_rank[i]),
             "rank_change": float(world_rank[i] - published_rank[i])} for i, name in enumerate(names)]
    return {"source": table.source, "setting": table.setting, "measure": table.measure,
            "tau_b": float(tau.statistic), "p_value": float(tau.pvalue),
            "interval_over_algorithms": tau_over_algorithms(world, published, resamples, rng),
            "interval_over_prompts": tau_over_prompts(world, counts, published, resamples, rng),
            "resamples": resamples, "algorithms": len(names), "rows": rows,
            "disagreements": disagreements(names, world, published),
            "not_in_world": sorted(set(table.values) - set(rates)),
            "not_published": sorted(set(rates) - set(table.values))}
