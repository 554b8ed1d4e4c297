"""Benchmark: every registered algorithm at its defaults through `igmu run`, scorecard and time.

Usage: python bench/algorithms.py [--targets ball,hazard] [--algorithms esd,uce] [--jobs N] [--json]
Each run is `igmu run --algorithm A --target T --json`; the table reports the five aspects, the
forgetting's unrecognisable share and the degenerate flag, the original model's preservation for the
same target, and the run's wall time. With --jobs N, N runs at a time, each on one torch thread
(scores do not depend on it; wall times then are a shared machine's).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from igmu.models.text_to_image import WorldTextToImage


def igmu(*args: str, env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, "-m", "igmu.cli", *args, "--json"], capture_output=True, text=True,
                            env=env)
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
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each on one torch thread)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.jobs > 1 else None
    targets, algorithms = args.targets.split(","), args.algorithms.split(",")
    jobs = [(target, None) for target in targets] + [(target, name) for target in targets for name in algorithms]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        cards = dict(zip(jobs, pool.map(lambda job: timed_card(*job, env), jobs)))
    rows = []
    for target in targets:
        original, _ = cards[(target, None)]
        base_preservation = original["aspects"]["preservation"]["score"]
        rows.append(row_of("(original)", target, *cards[(target, None)], base_preservation))
        for name in algorithms:
            rows.append(row_of(name, target, *cards[(target, name)], base_preservation))
            if not args.json:
                print(rows[-1], flush=True)
    if args.json:
        print(json.dumps(rows))


def timed_card(target: str, algorithm: str | None, env: dict | None) -> tuple[dict, float]:
    started = time.time()
    if algorithm is None:
        card = igmu("eval", "--model", "base", "--target", target, env=env)
    else:
        card = igmu("run", "--algorithm", algorithm, "--target", target, env=env)
    return card, round(time.time() - started, 1)


def row_of(algorithm: str, target: str, card: dict, wall_seconds: float, base_preservation: float) -> dict:
    scores = {k: round(v["score"], 3) for k, v in card["aspects"].items()}
    return {"algorithm": algorithm, "target": target, **scores,
            "unrecognisable_share": card["aspects"]["forgetting"].get("unrecognisable_share"),
            "degenerate": card.get("degenerate"),
            "preservation_vs_original": round(scores["preservation"] / base_preservation, 3),
            "unlearning_seconds": card.get("efficiency", {}).get("seconds", 0.0), "wall_seconds": wall_seconds}


if __name__ == "__main__":
    main()
