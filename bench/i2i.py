"""Benchmark: image-to-image unlearning and the paper's baselines at their defaults, via `igmu run`.

Usage: python bench/i2i.py [--targets ball,hazard] [--algorithms i2i,i2i-max-loss] [--set k=v ...] [--json]
Reports, per run, the forget and retain sets' embedding similarity (and its ratio to the original
model's), FD and IS analogue, the three scored aspects and the unlearning time. A run counts as a success at
forget similarity <= 0.5 x original and retain similarity >= 0.9 x original.
"""

import argparse
import json
import time

from algorithms import igmu

from igmu.models.image_to_image import WorldImageToImage

FORGET_BAR, RETAIN_BAR = 0.5, 0.9


def row(card: dict, seconds: float) -> dict:
    forget, retain, block = card["aspects"]["forgetting"], card["aspects"]["preservation"], card["i2i"]
    forget_ratio = block["forget_similarity"] / block["original_forget_similarity"]
    retain_ratio = block["retain_similarity"] / block["original_retain_similarity"]
    return {"algorithm": card["algorithm"], "target": card["target"],
            "forget_sim": round(block["forget_similarity"], 3), "forget_ratio": round(forget_ratio, 3),
            "retain_sim": round(block["retain_similarity"], 3), "retain_ratio": round(retain_ratio, 3),
            "original_forget_sim": round(block["original_forget_similarity"], 3),
            "original_retain_sim": round(block["original_retain_similarity"], 3),
            "forget_fd": round(forget["forget_fd"], 2), "original_forget_fd": round(forget["original_forget_fd"], 2),
            "retain_fd": round(retain["retain_fd"], 3), "original_retain_fd": round(retain["original_retain_fd"], 3),
            "forget_is": round(forget["forget_is"], 2), "retain_is": round(retain["retain_is"], 2),
            "original_forget_is": round(forget["original_forget_is"], 2),
            "original_retain_is": round(retain["original_retain_is"], 2),
            **{aspect: round(result["score"], 3) for aspect, result in card["aspects"].items()},
            "meets_bar": forget_ratio <= FORGET_BAR and retain_ratio >= RETAIN_BAR,
            "unlearning_seconds": card["efficiency"]["seconds"], "wall_seconds": round(seconds, 1)}


def main() -> None:
    from igmu.algorithms.base import ALGORITHMS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", default="ball")
    parser.add_argument("--algorithms", default=",".join(sorted(n for n, c in ALGORITHMS.items()
                                                                if WorldImageToImage in c.generator_kinds)))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="hyperparameter override")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for target in args.targets.split(","):
        for name in args.algorithms.split(","):
            started = time.time()
            card = igmu("run", "--algorithm", name, "--target", target, *[f"--set={s}" for s in args.sets])
            rows.append(row(card, time.time() - started))
            if not args.json:
                print(rows[-1], flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
