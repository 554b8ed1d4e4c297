"""Benchmark: the world's ranking of algorithms beside a published one (Kendall's tau-b).

Usage: python bench/published_ranking.py SWEEP [--storage ROOT] [--published FILE] [--resamples N] [--json]

SWEEP is a sweep run with `eval.defaults: true` at the full budget (e.g. sweeps/compare.yaml): its
defaults runs, each algorithm at its published defaults on the held-out test split, give the world's
measure. The published table (default: bench/published/unlearndiffatk-nudity-sd14.yaml) gives the
other side. Prints one row per algorithm both hold, the two ranks, tau-b with its bootstrap interval
(over algorithms, and over the world's attack prompts), and the pairs the two order oppositely.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from igmu.analysis.published import load_published, rank_agreement, world_rates
from igmu.sweep.results import locate_sweep

DEFAULT_TABLE = Path(__file__).parent / "published" / "unlearndiffatk-nudity-sd14.yaml"


def interval(bounds: list[float] | None) -> str:
    return f"{bounds[0]:.3f} to {bounds[1]:.3f}" if bounds else "none (every draw tied)"


def markdown(report: dict) -> str:
    lines = [f"{report['setting']}: Kendall's tau-b {report['tau_b']:.3f} over {report['algorithms']} algorithms "
             f"(p = {report['p_value']:.3f}); 95% bootstrap intervals ({report['resamples']} resamples): over "
             f"algorithms {interval(report['interval_over_algorithms'])}, over attack prompts "
             f"{interval(report['interval_over_prompts'])}", "",
             "| algorithm | published | world | attack prompts | published rank | world rank | change |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['algorithm']} | {r['published']:.2f} | {r['world']:.3f} | {r['n']} | {r['published_rank']:g} | "
              f"{r['world_rank']:g} | {r['rank_change']:+g} |" for r in report["rows"]]
    lines += ["", "Ordered oppositely: " + (", ".join(f"{a}/{b}" for a, b in report["disagreements"]) or "none"),
              "Published, not run here: " + (", ".join(report["not_in_world"]) or "none"),
              "Run here, not published: " + (", ".join(report["not_published"]) or "none")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--published", default=str(DEFAULT_TABLE))
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    table = load_published(args.published)
    report = rank_agreement(table, world_rates(locate_sweep(args.sweep, args.storage).sweep_dir, table.measure), args.resamples)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
