"""Metrics of an image-to-image generator (Li et al., ICLR 2024, section 5), in judge feature space.

The paper scores forget and retain sets separately: FID and IS of the generated images against the
real ones, and the cosine similarity of CLIP embeddings between each generated image and its
original. Here the judges play CLIP's and Inception's part: every figure is averaged over the two
mask types (centre inpainting, half outpainting) and, for embeddings and FD, over the four judges.

Cosine similarity is taken between judge embeddings centred on the mean embedding of the real
evaluation images: judge features follow a SiLU, so uncentred they share a large common direction
and even unrelated images score high; centred, unrelated images score about 0 and a perfect
reconstruction 1, which is the range CLIP's cosine spans in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from igmu.metrics.base import MetricResult, register_metric
from igmu.metrics.context import (
    EVALUATED_ROW,
    ORIGINAL_ROW,
    Budget,
    EvalSettings,
    EvaluationPrompts,
    WorldEvaluation,
    evaluates,
    target_detected,
)
from igmu.metrics.grid import GridSection
from igmu.metrics.intervals import Interval, bootstrap_interval, weighted_mean
from igmu.metrics.quality import Features, judge_features, relative_frechet_of, resampled_relative_frechet
from igmu.models.image_to_image import MASK_TYPES, I2IGenerator, WorldImageToImage
from igmu.models.judges import Judge
from igmu.world.concept_images import concept_images
from igmu.world.concepts import Concept

# Evaluation renders come from seeds no training or unlearning set uses.
EVAL_SEED_OFFSET = 40_000
SETS = ("forget", "retain")
REAL_ROW = "real"
NOT_APPLICABLE = {
    "alignment": "an image-to-image generator takes no prompt, so there is no prompt to align with",
    "robustness": "the prompt attacks (paraphrases, translations, UnlearnDiffAtk) need a text input",
}


@evaluates(WorldImageToImage)
@dataclass
class I2IEvalContext(WorldEvaluation):
    """The evaluation of an image-to-image generator: real renders with and without the target,
    masked, completed by both models, read by the world's judges."""

    target: Concept
    model: I2IGenerator
    original: I2IGenerator
    judges: dict[str, Judge]
    budget: Budget
    seed: int = 0
    split: str = "validation"
    _outputs: dict = field(default_factory=dict, repr=False)
    _figures: dict = field(default_factory=dict, repr=False)
    _judge_features: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        sizes = {"forget": self.budget.forget, "retain": self.budget.retain}
        self.real = {name: concept_images(self.target.name, name, sizes[name],
                                                   self.image_seed + EVAL_SEED_OFFSET + i)
                     for i, name in enumerate(SETS)}
        real = torch.cat(list(self.real.values()))
        self.centres = {name: judge.predict(real)["features"].mean(0) for name, judge in self.judges.items()}

    @classmethod
    def build(cls, model: I2IGenerator, target: str, budget: Budget, original: I2IGenerator | None = None,
              judges: dict[str, Judge] | None = None, cache=None, seed: int = 0,
              settings: EvalSettings | None = None):
        """`cache` is unused: outputs are memoised per context, renders are cheap."""
        settings = settings or EvalSettings()
        target = cls.world_target(model.kind, target, settings)
        return cls(target=target, model=model, original=original or model.kind.load_shipped(str(model.device)),
                   judges=judges or cls.default_judges(model.device), budget=budget, seed=seed,
                   split=settings.split)

    def extra_blocks(self) -> dict:
        """The aspects an image-to-image generator cannot be scored on, and the embedding similarities."""
        return {"not_applicable": dict(NOT_APPLICABLE), "i2i": similarity_block(self)}

    def grid_sections(self, per_row: int) -> list[GridSection]:
        """Per set and mask type: the real images, then the original and the evaluated model's
        completions of them masked. No prompt drives them, so the columns have no captions."""
        return [GridSection(f"{name}, {mask} mask", {REAL_ROW: self.real[name][:per_row],
                                                     ORIGINAL_ROW: self.outputs(name, mask, original=True)[:per_row],
                                                     EVALUATED_ROW: self.outputs(name, mask)[:per_row]})
                for name in SETS for mask in MASK_TYPES]

    @classmethod
    def evaluation_prompts(cls, kind, target: str, settings: EvalSettings) -> EvaluationPrompts:
        """None: an image-to-image generator is evaluated on rendered images, not prompts."""
        return EvaluationPrompts({}, source="")

    def outputs(self, set_name: str, mask: str, original: bool = False) -> torch.Tensor:
        """The (evaluated or original) generator's images for the masked real images of a set."""
        key = (set_name, mask, original)
        if key not in self._outputs:
            model = self.original if original else self.model
            self._outputs[key] = model.reconstruct(self.real[set_name], mask)
        return self._outputs[key]

    def _memo(self, key: tuple, compute) -> float:
        """Every figure is read by more than one metric; compute it once per context."""
        if key not in self._figures:
            self._figures[key] = compute()
        return self._figures[key]

    def features(self, set_name: str, mask: str | None = None, original: bool = False) -> Features:
        """Judge features of a set's real images (no mask) or of a generator's completions of them
        masked, computed once per context: similarity, FD and their intervals all read them."""
        key = (set_name, mask, original)
        if key not in self._judge_features:
            images = self.real[set_name] if mask is None else self.outputs(set_name, mask, original)
            self._judge_features[key] = judge_features(self.judges, images)
        return self._judge_features[key]

    def cosines(self, set_name: str, original: bool = False) -> list[torch.Tensor]:
        """Per judge and mask type, the centred cosine similarity of each generated image to its original."""
        real = self.features(set_name)
        return [F.cosine_similarity(self.features(set_name, mask, original)[name] - self.centres[name],
                                    real[name] - self.centres[name], dim=1)
                for name in self.judges for mask in MASK_TYPES]

    def per_image_similarity(self, set_name: str, original: bool = False) -> torch.Tensor:
        """Each image's similarity averaged over judges and masks: their mean over images is `similarity`."""
        return torch.stack(self.cosines(set_name, original), dim=1).double().mean(1)

    def similarity(self, set_name: str, original: bool = False) -> float:
        """Mean centred cosine similarity of judge embeddings, generated vs original image."""
        return self._memo(("similarity", set_name, original), lambda: self._similarity(set_name, original))

    def _similarity(self, set_name: str, original: bool) -> float:
        values = [float(cosine.mean()) for cosine in self.cosines(set_name, original)]
        return sum(values) / len(values)

    def frechet(self, set_name: str, original: bool = False) -> float:
        """Relative FD (igmu.metrics.quality) of generated vs real images, averaged over masks."""
        return self._memo(("frechet", set_name, original), lambda: sum(
            relative_frechet_of(self.features(set_name, mask, original), self.features(set_name))
            for mask in MASK_TYPES) / len(MASK_TYPES))

    def resampled_frechet(self, set_name: str, counts: torch.Tensor, original: bool = False) -> torch.Tensor:
        """`frechet` for each bootstrap resample of the set's real images (each with its completions)."""
        return sum(resampled_relative_frechet(self.features(set_name, mask, original), self.features(set_name), counts)
                   for mask in MASK_TYPES) / len(MASK_TYPES)

    def inception_score(self, set_name: str, original: bool = False) -> float:
        """exp(E_x KL(p(y|x) || p(y))) with the target category's judge as the classifier."""
        judge = self.judges[self.target.category]  # each category has its own judge, named after it
        values = []
        for mask in MASK_TYPES:
            probs = judge.predict(self.outputs(set_name, mask, original))["probs"].double().clamp_min(1e-12)
            marginal = probs.mean(0, keepdim=True)
            values.append(math.exp(float((probs * (probs.log() - marginal.log())).sum(1).mean())))
        return sum(values) / len(values)

    def target_rate(self, set_name: str, original: bool = False) -> float:
        """Share of generated images in which the target's detector finds the target."""
        hits = [target_detected(self.judges, self.target, self.outputs(set_name, mask, original)).float().mean()
                for mask in MASK_TYPES]
        return float(sum(hits) / len(hits))

    def figures(self, set_name: str) -> dict:
        """Similarity, FD and IS analogue of one set, for the evaluated and the original model."""
        out = {}
        for original, prefix in ((False, ""), (True, "original_")):
            out[f"{prefix}{set_name}_similarity"] = self.similarity(set_name, original)
            out[f"{prefix}{set_name}_fd"] = self.frechet(set_name, original)
            out[f"{prefix}{set_name}_is"] = self.inception_score(set_name, original)
        return out


def ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def clamp01(value: float) -> float:
    return math.nan if math.isnan(value) else min(1.0, max(0.0, value))


def similarity_ratio_interval(ctx: I2IEvalContext, set_name: str, score_of_ratio) -> Interval | None:
    """Bootstrap over the set's real images, each with both generators' completions of it: the
    similarity ratio of each resample, turned into the aspect's score by `score_of_ratio`."""
    evaluated, original = ctx.per_image_similarity(set_name), ctx.per_image_similarity(set_name, original=True)

    def statistic(counts):
        reference = weighted_mean(counts, original)
        ratios = torch.where(reference > 0, weighted_mean(counts, evaluated) / reference, torch.nan)
        return score_of_ratio(ratios).clamp(0.0, 1.0)

    return bootstrap_interval(statistic, (len(ctx.real[set_name]),))


@register_metric("forgetting", scores=I2IEvalContext)
def i2i_forgetting(ctx: I2IEvalContext) -> MetricResult:
    """Score = 1 - forget similarity / the original model's forget similarity (clamped to [0, 1]):
    0 when forget images are reconstructed as well as before, 1 when the reconstructions share
    nothing with the originals."""
    figures = ctx.figures("forget")
    similarity_ratio = ratio(figures["forget_similarity"], figures["original_forget_similarity"])
    return MetricResult(clamp01(1.0 - similarity_ratio), {
        "similarity_ratio": similarity_ratio, **figures,
        "target_rate": ctx.target_rate("forget"), "original_target_rate": ctx.target_rate("forget", True),
        "n_images": len(ctx.real["forget"]) * len(MASK_TYPES)},
        similarity_ratio_interval(ctx, "forget", lambda ratios: 1.0 - ratios))


@register_metric("preservation", scores=I2IEvalContext)
def i2i_preservation(ctx: I2IEvalContext) -> MetricResult:
    """Score = retain similarity / the original model's retain similarity (clamped to [0, 1])."""
    figures = ctx.figures("retain")
    similarity_ratio = ratio(figures["retain_similarity"], figures["original_retain_similarity"])
    return MetricResult(clamp01(similarity_ratio), {"similarity_ratio": similarity_ratio, **figures,
                                                    "n_images": len(ctx.real["retain"]) * len(MASK_TYPES)},
                        similarity_ratio_interval(ctx, "retain", lambda ratios: ratios))


@register_metric("quality", scores=I2IEvalContext, budgets=("full",))
def i2i_quality(ctx: I2IEvalContext) -> MetricResult:
    """Score = exp(-max(0, retain FD - the original model's retain FD)): 1 when retain images are
    generated as faithfully as before, about 0.37 one reference spread worse."""
    fd, original_fd = ctx.frechet("retain"), ctx.frechet("retain", True)

    def statistic(counts):  # real images resampled, each with both generators' completions of it
        excess = ctx.resampled_frechet("retain", counts) - ctx.resampled_frechet("retain", counts, original=True)
        return torch.exp(-excess.clamp(min=0))

    return MetricResult(math.exp(-max(0.0, fd - original_fd)), {"relative_fd_retain": fd,
                                                                "original_relative_fd_retain": original_fd,
                                                                "n_images": len(ctx.real["retain"])},
                        bootstrap_interval(statistic, (len(ctx.real["retain"]),)))


def similarity_block(ctx: I2IEvalContext) -> dict:
    """The scorecard's `"i2i"` block: the paper's embedding similarities, both sets, both models."""
    return {"forget_similarity": ctx.similarity("forget"), "retain_similarity": ctx.similarity("retain"),
            "original_forget_similarity": ctx.similarity("forget", True),
            "original_retain_similarity": ctx.similarity("retain", True),
            "masks": list(MASK_TYPES)}
