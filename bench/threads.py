"""Benchmark: what the thread count costs a short run, quiet and beside other work, and which model
sizes gain from a second thread.

Usage: python bench/threads.py [--json OUT] [--skip-sizes] [--skip-runs]

Runs (each `igmu run --algorithm salun --target ball --set steps=20 --set forget_images=16
--set retain_images=16 --budget small`, wall time of the whole command):
  quiet, at igmu's default threads, at OMP_NUM_THREADS=1 and at IGMU_THREADS=<every CPU> (torch's
  own default before igmu chose);
  the same three beside one busy single-threaded process (a Python loop);
  two default runs side by side, each against the quiet default run.
Ratios are taken within this one run of the bench. Sizes: one UNet forward and backward (batch 2,
at the model's own latent size: 32x32 for the SD-shape UNets of growing width) at one thread and at
every CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHORT_RUN = ["run", "--algorithm", "salun", "--target", "ball", "--set", "steps=20", "--set", "forget_images=16",
             "--set", "retain_images=16", "--budget", "small", "--quiet"]
# SD 1.4's UNet widths, scaled down: each row is one model size measured.
WIDTH_SCALES = (1 / 16, 1 / 8, 1 / 4, 1 / 2)
SD14_WIDTHS = (320, 640, 1280, 1280)
REPEATS = 3


def environment(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "IGMU_THREADS")}
    if setting == "one":
        env["OMP_NUM_THREADS"] = "1"
    elif setting == "all":
        env["IGMU_THREADS"] = str(len(os.sched_getaffinity(0)))
    return env


def start_run(setting: str) -> tuple[subprocess.Popen, float]:
    process = subprocess.Popen([sys.executable, "-m", "igmu.cli", *SHORT_RUN], env=environment(setting),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process, time.monotonic()


def finish(process: subprocess.Popen, started: float) -> float:
    _, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"igmu run failed: {err.strip().splitlines()[-1:]}")
    return round(time.monotonic() - started, 2)


def timed_run(setting: str) -> float:
    return finish(*start_run(setting))


def busy_neighbour() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def runs() -> dict:
    settings = ("default", "one", "all")
    quiet = {setting: timed_run(setting) for setting in settings}
    neighbour = busy_neighbour()
    try:
        busy = {setting: timed_run(setting) for setting in settings}
    finally:
        neighbour.kill()
    pair = [start_run("default"), start_run("default")]
    side_by_side = [finish(*each) for each in pair]
    return {"seconds": {"quiet": quiet, "busy_neighbour": busy, "side_by_side_default": side_by_side},
            "ratios": {"quiet_default_over_one": round(quiet["default"] / quiet["one"], 3),
                       "busy_default_over_one": round(busy["default"] / busy["one"], 3),
                       "quiet_all_over_one": round(quiet["all"] / quiet["one"], 3),
                       "busy_all_over_one": round(busy["all"] / busy["one"], 3),
                       "side_by_side_over_quiet": [round(s / quiet["default"], 3) for s in side_by_side]}}


def unet_of_width(scale: float):
    from diffusers import UNet2DConditionModel

    from igmu.models.random_sd import read_configs

    config = read_configs()["unet"]
    widths = [max(32, int(width * scale) // 32 * 32) for width in SD14_WIDTHS]
    config.update(block_out_channels=widths, sample_size=32)
    return UNet2DConditionModel.from_config(config)


def step_seconds(unet, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    size = unet.config.sample_size
    latents = torch.randn(2, unet.config.in_channels, size, size)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        unet(latents, 10, encoder_hidden_states=context).sample.square().mean().backward()
        best = min(best, time.perf_counter() - started)
    return best


def sizes() -> list[dict]:
    import torch

    from igmu.models.loader import load

    every = len(os.sched_getaffinity(0))
    rows = []
    models = [("world", load("base").unet.requires_grad_(True))] + [
        (f"sd14-width-x{scale:g}", unet_of_width(scale)) for scale in WIDTH_SCALES]
    for name, unet in models:
        parameters = sum(p.numel() for p in unet.parameters())
        one, all_cpus = step_seconds(unet, 1), step_seconds(unet, every)
        rows.append({"model": name, "parameters": parameters, "seconds_one_thread": round(one, 4),
                     f"seconds_{every}_threads": round(all_cpus, 4), "speedup": round(one / all_cpus, 3)})
        del unet
    torch.set_num_threads(every)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-sizes", action="store_true")
    parser.add_argument("--skip-runs", action="store_true")
    args = parser.parse_args(argv)
    report = {"cpus": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d %H:%M")}
    if not args.skip_runs:
        report["runs"] = runs()
        print(json.dumps(report["runs"]), flush=True)  # kept even if the sizes part fails
    if not args.skip_sizes:
        report["sizes"] = sizes()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
