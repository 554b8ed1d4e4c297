"""Benchmark: the optimism gap of a finished sweep, and how wide its scores' 95% intervals are.

Usage: python bench/optimism_gap.py SWEEP [--storage ROOT] [--json OUT]

For every trial the sweep re-scored on the held-out test split (its front, by default), the
validation score the search saw beside the test score, per aspect, and the mean gap (validation minus
test: positive means the search's pick looks better on the prompts it was tuned on); for the defaults
runs their test scores. Interval widths (high minus low) are summarised per split and aspect, over
the trials that carry them. Everything is read from the results table and defaults.parquet alone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import pandas as pd

from igmu.metrics.base import ASPECTS
from igmu.sweep.results import DEFAULTS_FILE, SPLIT_PREFIXES, TEST_PREFIX, VAL_PREFIX, load_sweep_table, locate_sweep


def rescored_trials(table: pd.DataFrame) -> pd.DataFrame:
    tested = [TEST_PREFIX + aspect for aspect in ASPECTS if TEST_PREFIX + aspect in table]
    return table[table[tested].notna().any(axis=1)] if tested else table.iloc[0:0]


def gaps(rows: pd.DataFrame) -> dict:
    out = {}
    for aspect in ASPECTS:
        pairs = [(v, t) for v, t in zip(rows.get(VAL_PREFIX + aspect, []), rows.get(TEST_PREFIX + aspect, []))
                 if _finite(v) and _finite(t)]
        out[aspect] = {"mean_validation": _mean([v for v, _ in pairs]), "mean_test": _mean([t for _, t in pairs]),
                       "mean_gap": _mean([v - t for v, t in pairs]), "trials": len(pairs)}
    return out


def widths(table: pd.DataFrame) -> dict:
    out = {}
    for split, prefix in SPLIT_PREFIXES.items():
        for aspect in ASPECTS:
            low, high = f"{prefix}{aspect}_ci_low", f"{prefix}{aspect}_ci_high"
            if low in table and high in table:
                values = [h - lo for lo, h in zip(table[low], table[high]) if _finite(lo) and _finite(h)]
                if values:
                    out[f"{split}/{aspect}"] = {"median": statistics.median(values), "max": max(values),
                                                "n": len(values)}
    return out


def report(sweep: str, storage: str | None) -> dict:
    source = locate_sweep(sweep, storage)
    table = load_sweep_table(source, split=None)
    rows = rescored_trials(table)
    trials = [{"trial_id": str(row["trial_id"]), "algorithm": row["algorithm"],
               **{f"{split}_{aspect}": _number(row.get(prefix + aspect))
                  for aspect in ASPECTS for split, prefix in (("val", VAL_PREFIX), ("test", TEST_PREFIX))}}
              for _, row in rows.iterrows()]
    defaults_path = source.sweep_dir / DEFAULTS_FILE
    defaults = pd.read_parquet(defaults_path) if defaults_path.is_file() else pd.DataFrame()
    return {"sweep": source.label, "trials": len(table), "rescored": trials, "gap": gaps(rows),
            "by_algorithm": {name: gaps(group) for name, group in rows.groupby("algorithm")},
            "interval_widths": widths(table),
            "defaults": [{"algorithm": r["algorithm"], **{a: _number(r.get(TEST_PREFIX + a)) for a in ASPECTS},
                          "seconds": _number(r.get("efficiency_seconds"))} for _, r in defaults.iterrows()]}


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _number(value):
    return float(value) if _finite(value) else None


def _mean(values):
    return statistics.fmean(values) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--json", dest="json_out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = report(args.sweep, args.storage)
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
