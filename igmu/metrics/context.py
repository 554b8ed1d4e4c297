"""What every metric reads: the target, both models, the judges, the prompt sets and the image cache.

Each kind of generator is evaluated through a context class registered for it with `@evaluates`;
the context says which prompt sets and judges the kind is scored with, which aspects it cannot
measure and why, what its image grid shows and what extra block its scorecard carries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from igmu.errors import UsageError
from igmu.metrics.base import check_budget
from igmu.metrics.cache import ImageCache
from igmu.metrics.grid import GridSection
from igmu.metrics.recognisability import ImageOutcomes, unrecognisable_images
from igmu.models.judges import Judge, expected_labels, load_world_judges
from igmu.models.kinds import GeneratorKind, kind_names
from igmu.models.loader import ALL_KINDS
from igmu.models.text_to_image import Generator, WorldTextToImage
from igmu.world.concepts import CHARACTER_NAMES, OBJECT_NAMES, STYLE_NAMES, Concept, get_concept
from igmu.world.prompts import SPLITS, PromptSpec, prompt_sets, split_seed

# Reference images of the original model use another seed, so that the original model scored
# against itself measures sampling noise, not an identical copy.
REFERENCE_SEED_OFFSET = 1000


@dataclass(frozen=True)
class Budget:
    """Images per prompt set, and the attack's size. `small` is the interim check inside sweeps."""

    name: str
    forget: int
    retain: int
    related: int
    paraphrase: int
    attack_prompts: int = 0
    attack_steps: int = 0


BUDGET_SIZES = {
    "small": Budget("small", forget=24, retain=32, related=16, paraphrase=0),
    "full": Budget("full", forget=48, retain=96, related=48, paraphrase=48, attack_prompts=8, attack_steps=30),
}


@dataclass(frozen=True)
class EvalSettings:
    """How a model is evaluated beyond target and budget. The world's evaluation is fixed by the
    world; real models take a category, prompt file, split, sampler and judges."""

    category: str | None = None
    prompts: str | None = None
    split: str = "validation"
    scheduler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    batch_size: int | None = None
    judges: str | None = None
    clip_model: str | None = None
    precision: str = "fp32"

    def judge_overrides(self) -> dict:
        return {"clip": {"model": self.clip_model}} if self.clip_model else {}

    def real_model_options(self) -> list[str]:
        """Options given that only a real model's evaluation takes."""
        defaults = EvalSettings()
        return [name for name in ("prompts", "scheduler", "steps", "guidance", "batch_size", "judges",
                                  "clip_model") if getattr(self, name) != getattr(defaults, name)]


# JSON {budget: {forget: n, retain: n, ...}}: smaller evaluation budgets for smoke runs and tests.
BUDGET_SIZES_ENV = "IGMU_BUDGET_SIZES"


def budget_of(context: type, name: str, overrides: dict | None = None) -> Budget:
    """The named budget of an evaluation context class; `overrides` (or $IGMU_BUDGET_SIZES) shrink it."""
    check_budget(name)
    if overrides is None:
        text = os.environ.get(BUDGET_SIZES_ENV)
        overrides = json.loads(text) if text else {}
    sizes = overrides.get(name)
    return Budget(name, **sizes) if sizes else context.budget_sizes[name]


# Sections of the before/after image grid of a text-to-image model, and the rows of each section.
GRID_ROWS = ("forget", "retain", "related", "paraphrase")
ORIGINAL_ROW, EVALUATED_ROW = "original", "unlearned"


@dataclass(frozen=True)
class EvaluationPrompts:
    """The prompts an evaluation draws from, per prompt set, as table rows (one dict per prompt),
    with the file they come from: what a sweep records as its evaluation datasets."""

    tables: dict[str, list[dict]]
    source: str
# The evaluation context class of each kind of generator that can be scored.
CONTEXTS: dict[type[GeneratorKind], type] = {}


def evaluates(*kinds: type[GeneratorKind]):
    """Register the decorated context class as the evaluation of `kinds`."""

    def decorate(cls):
        for kind in kinds:
            CONTEXTS[kind] = cls
        return cls

    return decorate


def can_score(kind: type[GeneratorKind]) -> bool:
    return kind in CONTEXTS


def context_for(kind: type[GeneratorKind], source: str = "") -> type:
    """The context class that scores generators of `kind`; a UsageError for a kind nothing scores yet."""
    if kind not in CONTEXTS:
        scored = [k for k in ALL_KINDS if k in CONTEXTS]
        raise UsageError(f"model {source!r} is {kind.description}; the five-aspect scorecard currently scores "
                         f"{kind_names(scored)} models (valid: 'base' or a saved model folder of those kinds)")
    return CONTEXTS[kind]


def spread(items: tuple, n: int) -> list:
    """`n` items evenly spaced over `items` (all of them if fewer): deterministic and varied."""
    if n <= 0:
        return []
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


class WorldEvaluation:
    """What the world's evaluation contexts share: the world's budgets and judges, and targets that
    are world concepts, evaluated on the world's own prompts, sampler and judges."""

    budget_sizes: ClassVar[dict[str, Budget]] = BUDGET_SIZES

    @classmethod
    def default_judges(cls, device, settings: EvalSettings | None = None) -> dict[str, Judge]:
        return load_world_judges(device)

    @classmethod
    def check(cls, kind, target: str, settings: EvalSettings) -> None:
        """The target and settings, checked before any model loads."""
        cls.world_target(kind, target, settings)

    @staticmethod
    def world_target(kind, target: str, settings: EvalSettings) -> Concept:
        concept = get_concept(kind.normalise_target(target))
        check_world_settings(concept, settings)
        return concept

    def judges_record(self) -> dict:
        from igmu.metrics.record import files_digest
        from igmu.models.judges import world_judges_dir

        return {"world_judges": files_digest(world_judges_dir())}

    def sampler_record(self) -> dict:
        sampling = getattr(self.model, "sampling_defaults", None)
        return {**sampling, "scheduler": self.model.scheduler_name} if sampling else {}

    @property
    def image_seed(self) -> int:
        """The seed the evaluated split's images start from: test-split seeds never meet validation ones."""
        return split_seed(self.seed, self.split)


@evaluates(WorldTextToImage)
@dataclass
class EvalContext(WorldEvaluation):
    """The evaluation of a text-to-image model of the world: prompt sets of the target concept,
    images sampled once per prompt set and seed, the world's detector judges."""

    target: Concept
    model: Generator
    original: Generator
    judges: dict[str, Judge]
    budget: Budget
    cache: ImageCache = field(default_factory=ImageCache)
    seed: int = 0
    split: str = "validation"
    # The outcomes of every image set forgetting and robustness judged, by name: each set is judged
    # once, and the scorecard's degenerate check counts each image once.
    judged: dict[str, ImageOutcomes] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        sets = prompt_sets(self.target.name, self.split)
        self.prompt_specs: dict[str, list[PromptSpec]] = {
            "forget": spread(sets.forget, self.budget.forget),
            "retain": spread(sets.retain, self.budget.retain),
            "related": spread(sets.related, self.budget.related),
            "paraphrase": spread(sets.paraphrase, self.budget.paraphrase),
        }
        self.prompt_specs["forget_removed"] = [p.without(self.target) for p in self.prompt_specs["forget"]]

    @classmethod
    def build(cls, model: Generator, target: str, budget: Budget, original: Generator | None = None,
              judges: dict[str, Judge] | None = None, cache: ImageCache | None = None, seed: int = 0,
              settings: EvalSettings | None = None):
        settings = settings or EvalSettings()
        target = cls.world_target(model.kind, target, settings)
        return cls(target=target, model=model, original=original or model.kind.load_shipped(str(model.device)),
                   judges=judges or cls.default_judges(model.device), budget=budget, cache=cache or ImageCache(),
                   seed=seed, split=settings.split)

    def extra_blocks(self) -> dict:
        """Scorecard entries beyond the aspects."""
        return {}

    def grid_sections(self, per_row: int) -> list[GridSection]:
        """Per prompt set, the original and the evaluated model's images of its first prompts."""
        return [GridSection(name, {ORIGINAL_ROW: self.images(name, original=True)[:per_row],
                                   EVALUATED_ROW: self.images(name)[:per_row]},
                            [p.text for p in self.prompt_specs[name][:per_row]])
                for name in GRID_ROWS if self.prompt_specs[name]]

    @classmethod
    def evaluation_prompts(cls, kind, target: str, settings: EvalSettings) -> EvaluationPrompts:
        """Every prompt of the target's world prompt sets (the evaluation draws its budget from these)."""
        import igmu.world.prompts as world_prompts

        sets = world_prompts.prompt_sets(get_concept(kind.normalise_target(target)).name, settings.split)
        tables = {name: [{"text": p.text, "split": p.split, "kind": p.kind, "lang": p.lang, "object": p.object or "",
                          "style": p.style or "", "character": p.character or "", "hazard": p.hazard}
                         for p in getattr(sets, name)] for name in GRID_ROWS}
        return EvaluationPrompts(tables, source=world_prompts.__file__)

    def images(self, set_name: str, original: bool = False, replica: int = 0) -> torch.Tensor:
        """Images of a prompt set from the evaluated model, or (reference seeds) the original model;
        `replica` 1 is a second, independent reference sample (the quality metric's noise floor)."""
        prompts = [p.text for p in self.prompt_specs[set_name]]
        if original:
            return self.cache.images(self.original, prompts, self.image_seed + (1 + replica) * REFERENCE_SEED_OFFSET)
        return self.cache.images(self.model, prompts, self.image_seed)

    def target_present(self, images: torch.Tensor) -> torch.Tensor:
        """The target's detector: a bool per image."""
        return target_detected(self.judges, self.target, images)

    def attribute_hits(self, set_name: str, images: torch.Tensor, skip: tuple[str, ...] = ()) -> dict[str, list]:
        """Per judge, one bool per image whose prompt asks for that judge's attribute."""
        return attribute_hits(self.judges, self.prompt_specs[set_name], images, skip)

    def attribute_checks(self, set_name: str, images: torch.Tensor,
                         skip: tuple[str, ...] = ()) -> dict[str, list[tuple[int, bool]]]:
        """`attribute_hits` with each check's image index (what a bootstrap over images resamples)."""
        return attribute_checks(self.judges, self.prompt_specs[set_name], images, skip)

    def outcomes(self, set_name: str) -> ImageOutcomes:
        """What became of each of the evaluated model's images of a prompt set (see `image_outcomes`)."""
        if set_name not in self.judged:
            self.judge_outcomes(set_name, self.prompt_specs[set_name], self.images(set_name))
        return self.judged[set_name]

    def judge_outcomes(self, name: str, specs: list[PromptSpec], images: torch.Tensor) -> ImageOutcomes:
        """The outcomes of any images of `specs` (e.g. attacked ones), kept under `name`."""
        self.judged[name] = image_outcomes(self.judges, self.target, specs, images)
        return self.judged[name]


def check_world_settings(target: Concept, settings: EvalSettings) -> None:
    if settings.split not in SPLITS:
        raise UsageError(f"unknown split {settings.split!r}; valid: {', '.join(SPLITS)}")
    given = settings.real_model_options()
    if given:
        raise UsageError(f"{', '.join(given)}: the world model is evaluated on the world's own prompt sets, "
                         f"sampler and judges; valid: leave them out, or evaluate a Stable Diffusion model")
    if settings.category is not None and settings.category != target.category:
        raise UsageError(f"category {settings.category!r} does not match world concept {target.name!r}, "
                         f"which is a {target.category}; valid: {target.category} or leave it out")


def target_detected(judges: dict[str, Judge], target: Concept, images: torch.Tensor) -> torch.Tensor:
    if target.category == "object":
        return judges["object"].predict(images)["probs"].argmax(-1) == OBJECT_NAMES.index(target.name)
    if target.category == "style":
        return judges["style"].predict(images)["probs"].argmax(-1) == STYLE_NAMES.index(target.name)
    if target.category == "sensitive":
        return judges["sensitive"].predict(images)["probs"].argmax(-1) == 1
    return judges["character"].predict(images)["probs"].argmax(-1) == 1 + CHARACTER_NAMES.index(target.name)


def attribute_hits(judges: dict[str, Judge], specs: list[PromptSpec], images: torch.Tensor,
                   skip: tuple[str, ...] = ()) -> dict[str, list]:
    return hits_of(attribute_checks(judges, specs, images, skip))


def attribute_checks(judges: dict[str, Judge], specs: list[PromptSpec], images: torch.Tensor,
                     skip: tuple[str, ...] = ()) -> dict[str, list[tuple[int, bool]]]:
    """Per judge, (image index, whether the judge finds what the prompt asks for) for each image whose
    prompt asks for that judge's attribute."""
    predicted = {name: judge.predict(images)["probs"].argmax(-1).tolist() for name, judge in judges.items()
                 if name not in skip}
    checks = {name: [] for name in predicted}
    for i, spec in enumerate(specs):
        for name, label in expected_labels(spec).items():
            if name in predicted and label is not None:
                checks[name].append((i, predicted[name][i] == label))
    return checks


def hits_of(checks: dict[str, list[tuple[int, bool]]]) -> dict[str, list]:
    """Per judge, the checks' outcomes alone, in image order."""
    return {name: [hit for _, hit in pairs] for name, pairs in checks.items()}


def image_outcomes(judges: dict[str, Judge], target: Concept, specs: list[PromptSpec],
                   images: torch.Tensor) -> ImageOutcomes:
    """Per image of a prompt that asks for `target`: unrecognisable, target present, rest of the prompt
    missing, or forgotten (recognisable, no target, and every other attribute the prompt asks for found)."""
    rest = [rest_of_prompt(spec, target) for spec in specs]
    asked = {name for labels in rest for name in labels}
    predicted = {name: judges[name].predict(images)["probs"].argmax(-1).tolist() for name in asked}
    rest_shown = [all(predicted[name][i] == label for name, label in labels.items()) for i, labels in enumerate(rest)]
    return ImageOutcomes.judged(unrecognisable_images(images), target_detected(judges, target, images),
                                torch.tensor(rest_shown, dtype=torch.bool))


def rest_of_prompt(spec: PromptSpec, target: Concept) -> dict[str, int]:
    """What each judge should find in an image of `spec` besides the target: the labels of the prompt
    with the target removed (for a character, that removes its object and style too); the sensitive
    judge only where the prompt asks for the hazard, since "no hazard" is not something a prompt shows."""
    labels = expected_labels(spec.without(target))
    return {name: label for name, label in labels.items()
            if label is not None and (name != "sensitive" or label == 1)}
