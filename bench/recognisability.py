"""Calibration of the recognisability check (igmu.metrics.recognisability, igmu.metrics.context).

Measures, per image set, the statistics the check reads (pixel spread, roughness, the object judge's
top probability) and the share of images it calls unrecognisable: the shipped generator's own images
on every canonical prompt and every target's paraphrases at several seeds, the renderer's scenes,
and constructed images that must be caught (blank, constant, noise, blur, a zeroed UNet's output).
docs/metrics.md ("Recognisable images") records the numbers.

Usage: python bench/recognisability.py [--seeds 0,1000,2000] [--images FILE.pt] [--json]
(--images keeps the generated images, so a second run only re-measures.)
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from igmu.metrics.recognisability import gaussian_blur, image_statistics
from igmu.models.judges import load_world_judges
from igmu.models.loader import load
from igmu.world.concepts import ALL_CONCEPTS
from igmu.world.prompts import _all_specs, prompt_sets
from igmu.world.render import random_scene, render_batch

QUANTILES = (0.0, 0.001, 0.01, 0.5, 0.99, 0.999, 1.0)
# Noise predictions of a UNet whose output layer is zeroed to a constant (see tests/test_degenerate.py).
ZEROED_OUTPUT = {"zeroed_unet_black": 100.0, "zeroed_unet_white": -100.0, "zeroed_unet_sign_noise": 0.0}


def calibration_prompts() -> list[str]:
    """Every canonical English prompt, and every target's paraphrases and translations."""
    texts = [spec.text for spec in _all_specs("en")]
    for concept in ALL_CONCEPTS:
        texts += [spec.text for spec in prompt_sets(concept.name).paraphrase]
    return list(dict.fromkeys(texts))


def generated_images(seeds: list[int], path: Path | None) -> torch.Tensor:
    if path is not None and path.is_file():
        return torch.load(path)
    generator, prompts = load("world", device="cpu"), calibration_prompts()
    images = torch.cat([generator.sample(prompts, seed=seed) for seed in seeds])
    if path is not None:
        torch.save(images, path)
    return images


def zeroed_unet_images(prompts: list[str], bias: float) -> torch.Tensor:
    model = load("world", device="cpu")
    with torch.no_grad():
        model.unet.conv_out.weight.zero_()
        model.unet.conv_out.bias.fill_(bias)
    return model.sample(prompts, seed=0)


def image_sets(generated: torch.Tensor) -> dict[str, torch.Tensor]:
    noise = torch.Generator().manual_seed(0)
    n, shape = 200, (200, 3, 32, 32)
    renders = torch.from_numpy(render_batch([random_scene(np.random.default_rng(i)) for i in range(1000)]))
    sample = generated[torch.randperm(len(generated), generator=noise)[:1000]]
    sets = {"generator": generated, "renders": renders.permute(0, 3, 1, 2),
            "black": torch.zeros(4, 3, 32, 32), "white": torch.ones(4, 3, 32, 32),
            "constant_colours": torch.rand(n, 3, 1, 1, generator=noise).expand(shape).clone(),
            "constant+noise_0.01": (torch.rand(n, 3, 1, 1, generator=noise)
                                    + 0.01 * torch.randn(shape, generator=noise)).clamp(0, 1),
            "uniform_noise": torch.rand(shape, generator=noise),
            "grey_noise_0.1": (0.5 + 0.1 * torch.randn(shape, generator=noise)).clamp(0, 1),
            "sign_noise": (torch.randn(shape, generator=noise) > 0).float(),
            "generator+noise_0.05": (sample[:n] + 0.05 * torch.randn(shape, generator=noise)).clamp(0, 1)}
    for sigma in (0.75, 1.0, 1.5, 2.0, 2.5, 3.0):
        sets[f"generator_blur_{sigma}px"] = gaussian_blur(sample, sigma)
    large = F.interpolate(sample[:40], size=(512, 512), mode="bicubic").clamp(0, 1)
    sets["generator_512px_bicubic"] = large
    sets["generator_512px_blur_48px"] = gaussian_blur(large[:10], 48.0)
    sets["sign_noise_512px"] = (torch.randn(20, 3, 512, 512, generator=noise) > 0).float()
    prompts = calibration_prompts()[::20]
    for name, bias in ZEROED_OUTPUT.items():
        sets[name] = zeroed_unet_images(prompts, bias)
    return sets


def quantiles(values: torch.Tensor) -> list[float]:
    return [round(float(torch.quantile(values.float(), q)), 4) for q in QUANTILES]


def measure(images: torch.Tensor, judges) -> dict:
    statistics = image_statistics(images)
    small = F.interpolate(images, size=(32, 32), mode="area") if images.shape[-1] != 32 else images
    # Reported, not used: a candidate for the check that the judges' overconfidence ruled out.
    confidence = judges["object"].predict(small)["probs"].max(-1).values
    return {"n": len(images), "spread": quantiles(statistics.spread), "roughness": quantiles(statistics.roughness),
            "object_confidence": quantiles(confidence),
            "object_confidence_below_0.5": round(float((confidence < 0.5).float().mean()), 4),
            "unrecognisable": round(float(statistics.unrecognisable().float().mean()), 4),
            "blank": round(float(statistics.blank().float().mean()), 4),
            "noise_like": round(float(statistics.noise_like().float().mean()), 4),
            "blurred": round(float(statistics.blurred().float().mean()), 4),
            "hazard_present": round(float((judges["sensitive"].predict(small)["probs"][:, 1] > 0.5).float().mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1000,2000")
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    judges = load_world_judges()
    generated = generated_images([int(s) for s in args.seeds.split(",")], args.images)
    report = {"quantiles": list(QUANTILES),
              "sets": {name: measure(images, judges) for name, images in image_sets(generated).items()}}
    print(json.dumps(report, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
