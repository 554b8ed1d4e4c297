"""Benchmark: every registered algorithm at its defaults through `igmu run`, scorecard and time.

Usage: python bench/algorithms.py [--targets ball,hazard] [--algorithms esd,uce] [--json]
Each run is `igmu run --algorithm A --target T --json`; the table reports the five aspects,
the original model's preservation for the same target, and the run's wall time.
"""

import argparse
import json
import subprocess
import sys
import time

from igmu.models.text_to_image import WorldTextToImage


def igmu(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "igmu.cli", *args, "--json"], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"igmu {' '.join(args)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout)


def main() -> None:
    from igmu.algorithms.base import ALGORITHMS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", default="ball,hazard")
    text_to_image = sorted(name for name, cls in ALGORITHMS.items() if WorldTextToImage in cls.generator_kinds)
    parser.add_argument("--algorithms", default=",".join(text_to_image),
                        help="text-to-image algorithms (image-to-image ones: bench/i2i.py)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for target in args.targets.split(","):
        started = time.time()
        original = igmu("eval", "--model", "base", "--target", target)
        base_preservation = original["aspects"]["preservation"]["score"]
        rows.append({"algorithm": "(original)", "target": target,
                     **{k: round(v["score"], 3) for k, v in original["aspects"].items()},
                     "preservation_vs_original": 1.0, "unlearning_seconds": 0.0,
                     "wall_seconds": round(time.time() - started, 1)})
        for name in args.algorithms.split(","):
            started = time.time()
            card = igmu("run", "--algorithm", name, "--target", target)
            scores = {k: round(v["score"], 3) for k, v in card["aspects"].items()}
            rows.append({"algorithm": name, "target": target, **scores,
                         "preservation_vs_original": round(scores["preservation"] / base_preservation, 3),
                         "unlearning_seconds": card["efficiency"]["seconds"],
                         "wall_seconds": round(time.time() - started, 1)})
            if not args.json:
                print(rows[-1], flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
