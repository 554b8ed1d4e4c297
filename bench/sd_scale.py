"""Benchmark: igmu's own algorithms and sampler on Stable Diffusion 1.4-shape models with random weights.

Usage: python bench/sd_scale.py [--shape tiny|sd14] [--batch-sizes 1,2,4,8] [--steps 50]
                                [--train-steps 1] [--peak-tflops 989.4] [--device cuda] [--json OUT]

The model is built from component configs (`--shape sd14`: SD 1.4's, shipped under
igmu/assets/configs/sd-v1-4/; `--shape tiny`: a small model that finishes in well under a minute on
two CPU cores), saved to a temporary folder and loaded through `igmu.models.loader.load`, so the
figures are those of igmu's own code path. Nothing is downloaded; the weights are random, so only
time, memory and FLOPs mean anything here, never image quality.

Per precision (fp32; bf16 and fp16 too when CUDA is present) it measures:
  * one ESD step and one SalUn step (`igmu.run.build_unlearner` + `Unlearner.step`, at the official
    SD defaults: ESD batch 1 with partial sampling over `--steps` DDIM steps, SalUn batch 8 over the
    full UNet): seconds (mean of `--train-steps` steps after one warm-up step) and peak memory;
  * eval sampling throughput (images/second at `--steps` DDIM steps with classifier-free guidance)
    for each of `--batch-sizes`, stopping at the first that runs out of memory; the largest batch
    that fits is reported;
and once per model the UNet's FLOPs for one forward at batch 1 and at batch 2 (one CFG step of one
image), counted by torch.utils.flop_counter.FlopCounterMode, from which each sampling run's
achieved TFLOP/s and its fraction of `--peak-tflops` follow.

Peak memory is the CUDA allocator's peak on a GPU; on a CPU it is the process's peak resident set,
which only grows, so CPU figures after the first are upper bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

# H100 SXM5 dense BF16 tensor-core peak, TFLOP/s (NVIDIA H100 datasheet; 1979 is with 2:4 sparsity).
H100_SXM_BF16_DENSE_TFLOPS = 989.4
TARGET = "a photo of a cat"
# SD's usual sampling guidance (and the bench's CFG scale).
GUIDANCE = 7.5
# SalUn's `prepare` draws its forget and retain images with the folder's sampling steps. A random
# model's images carry nothing, so a short sampler keeps setup cheap; steps measured use `--steps`.
SETUP_SAMPLING = {"steps": 2, "guidance": GUIDANCE}
# Only the step is measured: the number of optimisation steps a run would take is irrelevant here.
ALGORITHMS = ("esd", "salun")


def tiny_configs() -> dict[str, dict]:
    """A small SD of the same component types (64 px images, 8x8 latents), for CPU smoke runs."""
    from igmu.models.random_sd import read_configs

    configs = read_configs()
    configs["unet"].update(sample_size=8, layers_per_block=1, block_out_channels=[32, 64],
                           down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                           up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
                           cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    configs["vae"].update(sample_size=64, block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                          down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    configs["text_encoder"].update(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=16, projection_dim=32)
    return configs


def sd14_configs() -> dict[str, dict]:
    from igmu.models.random_sd import read_configs

    return read_configs()


SHAPES = {"tiny": tiny_configs, "sd14": sd14_configs}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(fn, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    started = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - started, out


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def algorithm_step(algorithm: str, generator, steps: int, train_steps: int) -> dict:
    """Seconds and peak memory of `algorithm`'s step at its official SD defaults."""
    from igmu.algorithms.base import get_algorithm
    from igmu.run import build_unlearner, peak_memory_mb

    device = generator.device
    fields = {f.name for f in dataclasses.fields(get_algorithm(algorithm).Params)}
    # Enough images for one batch (SalUn's official batch is 8); ESD samples over `steps` DDIM steps.
    sizing = {"forget_images": 8, "retain_images": 8, "ddim_steps": steps}
    unlearner = build_unlearner(algorithm, generator, TARGET, {k: v for k, v in sizing.items() if k in fields},
                                seed=0, anchor="")
    prepare_seconds, _ = timed(unlearner.prepare, device)
    unlearner.step()  # warm-up: allocator, kernels and optimiser state are created here
    reset_peak(device)
    seconds, losses = timed(lambda: [unlearner.step() for _ in range(train_steps)], device)
    out = {"seconds": seconds / train_steps, "peak_memory_mb": peak_memory_mb(device),
           "prepare_seconds": prepare_seconds, "loss": losses[-1]["loss"],
           "params": dataclasses.asdict(unlearner.params)}
    generator.unet.requires_grad_(False).eval()
    return out


def guarded(fn) -> dict:
    """`fn()`, or the out-of-memory error it ran into (other errors propagate)."""
    try:
        return fn()
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        return {"error": "out of memory"}


def sampling_throughput(generator, batch_sizes: list[int], steps: int, flops_per_image_step: float,
                        peak_tflops: float) -> dict:
    """Images/second of `generator.sample` per batch size, until one does not fit."""
    from igmu.run import peak_memory_mb

    device = generator.device
    generator.sample([TARGET], steps=min(steps, 2), guidance=GUIDANCE)  # warm-up
    runs = []
    for batch in batch_sizes:
        release(device)
        reset_peak(device)
        try:
            sample = functools.partial(generator.sample, [TARGET] * batch, steps=steps, guidance=GUIDANCE,
                                       batch_size=batch)
            seconds, _ = timed(sample, device)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            runs.append({"batch_size": batch, "error": "out of memory"})
            break
        tflops = batch * steps * flops_per_image_step / seconds / 1e12
        runs.append({"batch_size": batch, "seconds": seconds, "images_per_second": batch / seconds,
                     "peak_memory_mb": peak_memory_mb(device), "tflops": tflops,
                     "fraction_of_peak": tflops / peak_tflops})
    fitted = [run for run in runs if "error" not in run]
    return {"steps": steps, "guidance": GUIDANCE, "runs": runs,
            "largest_batch": max((run["batch_size"] for run in fitted), default=0),
            "images_per_second": max((run["images_per_second"] for run in fitted), default=0.0)}


@torch.no_grad()
def unet_flops(generator, batch: int) -> int:
    """FLOPs of one UNet forward at `batch` (batch 2 = one image's classifier-free-guided step)."""
    from torch.utils.flop_counter import FlopCounterMode

    latents = generator.initial_latents(batch, seed=0)
    # Any timestep costs the same; the middle of the training range.
    t = torch.full((batch,), generator.scheduler.config.num_train_timesteps // 2, device=generator.device)
    embeddings = generator.encode_prompt([TARGET] * batch)
    with FlopCounterMode(display=False) as counter:
        generator.unet(latents, t, encoder_hidden_states=embeddings)
    return int(counter.get_total_flops())


def parameters(generator) -> dict[str, int]:
    modules = {"unet": generator.unet, "text_encoder": generator.text_encoder, "vae": generator.codec}
    return {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}


def default_precisions(device: torch.device) -> list[str]:
    return ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32"]


def measure_precision(folder: Path, precision: str, args, flops_per_image_step: float) -> dict:
    from igmu.models.loader import load

    generator = load(str(folder), device=args.device, precision=precision)
    out = {}
    for name in ALGORITHMS:
        out[name] = guarded(functools.partial(algorithm_step, name, generator, args.steps, args.train_steps))
        release(generator.device)
    out["sampling"] = sampling_throughput(generator, args.batch_sizes, args.steps, flops_per_image_step,
                                          args.peak_tflops)
    return out


def model_figures(folder: Path, device: str | None) -> dict:
    """Parameter counts, resolution and UNet FLOPs (precision-independent: counted once, in fp32)."""
    from igmu.models.loader import load

    generator = load(str(folder), device=device, precision="fp32")
    figures = {"parameters": parameters(generator),
               "resolution": generator.codec.decode(generator.initial_latents(1, 0)).shape[-1],
               "unet_flops": {"batch_1": unet_flops(generator, 1), "batch_2_cfg": unet_flops(generator, 2)},
               "device": str(generator.device)}
    return figures


def run(args) -> dict:
    from igmu.models.random_sd import build_random_sd

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = args.precisions or default_precisions(device)
    with tempfile.TemporaryDirectory(prefix="igmu-sd-scale-") as tmp:
        folder = build_random_sd(Path(tmp) / args.shape, SHAPES[args.shape](), seed=0, sampling=SETUP_SAMPLING)
        report = {"shape": args.shape, "torch": torch.__version__, "peak_tflops": args.peak_tflops,
                  "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                  **model_figures(folder, args.device)}
        release(device)
        per_image_step = report["unet_flops"]["batch_2_cfg"]
        report["precisions"] = {}
        for precision in precisions:
            report["precisions"][precision] = measure_precision(folder, precision, args, per_image_step)
            release(device)
            print(f"{precision}: {json.dumps(summary(report['precisions'][precision]))}", file=sys.stderr)
    return report


def summary(figures: dict) -> dict:
    short = {name: figures[name].get("seconds", figures[name].get("error")) for name in ALGORITHMS}
    short["images_per_second"] = figures["sampling"]["images_per_second"]
    short["largest_batch"] = figures["sampling"]["largest_batch"]
    return short


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch-sizes", default="1,2,4,8", type=lambda s: [int(x) for x in s.split(",")],
                        help="sampling batch sizes, in increasing order")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of sampling and of ESD's partial sampling")
    parser.add_argument("--train-steps", type=int, default=1, help="algorithm steps timed after one warm-up step")
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS,
                        help="the accelerator's peak dense bf16 TFLOP/s (default: H100 SXM)")
    parser.add_argument("--precisions", type=lambda s: s.split(","), default=None,
                        help="default: fp32, plus bf16 and fp16 on CUDA")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="write the figures here")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.json_out:
        args.json_out.write_text(text)
    else:
        print(text)
    return report


if __name__ == "__main__":
    main()
