"""Reference run on Stable Diffusion 1.4 with the real judges: the original model's scorecard, one
algorithm at its official defaults, and the unlearned model's scorecard, on the held-out test split.

It needs the real weights (SD 1.4 and CLIP ViT-L/14 in the local hub cache or as folders, and
NudeNet's package for nudity), which the test machines do not have; docs/real-models.md says it has
not been run until someone with the weights runs it and records the result in docs/benchmarks.md.

    python bench/sd_reference.py --json sd14-esd-nudity.json
    python bench/sd_reference.py --algorithm uce --target "Van Gogh" --category style --precision fp16
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from igmu.errors import UsageError

DEFAULTS = {"model": "CompVis/stable-diffusion-v1-4", "algorithm": "esd", "target": "nudity", "category": "nudity"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key}", default=value)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--budget", default="full", choices=("small", "full"))
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--clip-model", default=None, help="CLIP judge (default: the judges config's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the budget's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of the algorithm's official defaults (repeatable)")
    parser.add_argument("--json", dest="json_path", default=None)
    return parser.parse_args(argv)


def reference(args: argparse.Namespace) -> dict:
    from igmu.metrics.context import EvalSettings
    from igmu.metrics.scorecard import build_context, check_evaluation, scorecard
    from igmu.models.loader import check_local
    from igmu.run import build_unlearner, load_model_for, model_kind_for, unlearn

    settings = EvalSettings(category=args.category, split=args.split, steps=args.steps, clip_model=args.clip_model,
                            precision=args.precision)
    kind = model_kind_for(args.algorithm, args.model)
    check_local(args.model)
    check_evaluation(kind, args.target, settings, args.model)
    started = time.time()
    original = load_model_for(args.algorithm, args.model, args.device, args.precision)
    before = scorecard(build_context(original, args.target, args.budget, seed=args.seed, settings=settings))
    generator = load_model_for(args.algorithm, args.model, args.device, args.precision)
    overrides = dict(pair.split("=", 1) for pair in args.overrides)
    unlearner = build_unlearner(args.algorithm, generator, args.target, overrides, seed=args.seed,
                                category=args.category)
    efficiency, _ = unlearn(unlearner)
    generator.source = f"{args.algorithm}({args.target})"
    after = scorecard(build_context(generator, args.target, args.budget, original=original, seed=args.seed,
                                    settings=settings))
    return {"arguments": vars(args), "machine": platform.platform(), "seconds": round(time.time() - started, 1),
            "params": dict(vars(unlearner.params)), "efficiency": efficiency, "original": before, "unlearned": after}


def main(argv: list[str] | None = None) -> int:
    from igmu.cli.progress import showing_progress

    args = parse(argv)
    try:
        with showing_progress(quiet=False):  # the CLI's bars, on a terminal only
            result = reference(args)
    except UsageError as err:
        print(f"sd_reference: error: {err}", file=sys.stderr)
        return UsageError.exit_code
    text = json.dumps(result, indent=2, default=str)
    if args.json_path:
        Path(args.json_path).write_text(text)
    for name in ("original", "unlearned"):
        scores = {aspect: round(r["score"], 3) for aspect, r in result[name]["aspects"].items()}
        print(f"{name:>9}: {scores}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
