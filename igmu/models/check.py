"""`igmu world check`: are the shipped judges and generators good enough to score unlearning with?

Judges are scored on fresh renders from a seed never used in training; the generator on prompts
whose texts were held out of training, sampled with a seed never used in training, as judged by the
judges; the image-to-image generator on fresh renders under each mask, as judged by the judges.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from igmu.models.build import judge_training_batch
from igmu.models.image_to_image import MASK_TYPES, I2IGenerator, WorldImageToImage
from igmu.models.judges import Judge, expected_labels, load_world_judges
from igmu.models.loader import load
from igmu.models.text_to_image import Generator, WorldTextToImage
from igmu.world.training_data import held_out_specs

# Seeds far from the build's (0, 1): fresh renders and fresh sampling noise.
CHECK_RENDER_SEED = 10_007
CHECK_SAMPLE_SEED = 20_011
# Below these, a judge's or generator's own mistakes would swamp the unlearning effects being measured.
JUDGE_TARGET = 0.97
GENERATOR_TARGETS = {"object": 0.90, "style": 0.85, "sensitive": 0.90, "character": 0.85}
# The object judge must read the image-to-image generator's outputs of held-out renders, per mask.
I2I_OBJECT_TARGET = 0.90
CHECK_I2I_SEED = 30_011


def judge_accuracy(judges: dict[str, Judge], n: int, seed: int = CHECK_RENDER_SEED) -> dict[str, float]:
    images, labels = judge_training_batch(np.random.default_rng(seed), n)
    return {name: float((judge.predict(images)["probs"].argmax(-1) == labels[name]).float().mean())
            for name, judge in judges.items()}


def generator_accuracy(generator: Generator, judges: dict[str, Judge], n: int,
                       seed: int = CHECK_SAMPLE_SEED) -> dict[str, float]:
    specs = held_out_specs(n, seed)
    images = generator.sample([s.text for s in specs], seed=seed)
    predicted = {name: judge.predict(images)["probs"].argmax(-1) for name, judge in judges.items()}
    accuracy = {}
    for name in judges:
        pairs = [(int(predicted[name][i]), expected_labels(s)[name]) for i, s in enumerate(specs)]
        scored = [p == e for p, e in pairs if e is not None]
        accuracy[name] = float(np.mean(scored)) if scored else float("nan")
    return accuracy


def i2i_accuracy(generator: I2IGenerator, judges: dict[str, Judge], n: int,
                 seed: int = CHECK_I2I_SEED) -> dict[str, float]:
    """Per mask type and judge, accuracy on the generator's outputs for fresh, masked renders."""
    images, labels = judge_training_batch(np.random.default_rng(seed), n)
    accuracy = {}
    for mask in MASK_TYPES:
        made = generator.reconstruct(images, mask)
        for name, judge in judges.items():
            accuracy[f"{mask}_{name}"] = float((judge.predict(made)["probs"].argmax(-1) == labels[name]).float().mean())
    return accuracy


def world_check(n_judge: int = 2000, n_generator: int = 400, model: str = "world", n_i2i: int = 1000) -> dict:
    started = time.time()
    judges = load_world_judges()
    report = {"judges": judge_accuracy(judges, n_judge)}
    with torch.no_grad():
        report["generator"] = generator_accuracy(load(model, kinds=(WorldTextToImage,)), judges, n_generator)
    report["i2i"] = i2i_accuracy(WorldImageToImage.load_shipped(device="cpu"), judges, n_i2i)
    report["seconds"] = round(time.time() - started, 1)
    return report


def unmet_targets(report: dict) -> list[str]:
    """Human-readable list of every accuracy below its target (empty when all are met)."""
    unmet = [f"judge {k}: {v:.3f} < {JUDGE_TARGET}" for k, v in report["judges"].items() if not v >= JUDGE_TARGET]
    unmet += [f"generator {k}: {report['generator'][k]:.3f} < {t}" for k, t in GENERATOR_TARGETS.items()
              if not report["generator"][k] >= t]
    unmet += [f"i2i {mask}_object: {report['i2i'][f'{mask}_object']:.3f} < {I2I_OBJECT_TARGET}"
              for mask in MASK_TYPES if not report["i2i"][f"{mask}_object"] >= I2I_OBJECT_TARGET]
    return unmet

