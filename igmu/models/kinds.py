"""What a kind of generator is. Each kind is a class that owns everything that differs between
kinds: how its folders are recognised and loaded, where its shipped model lives, what its targets
are and which category a target has. Shared code asks a generator's `kind` instead of comparing
names. The kinds themselves live beside their implementations (`text_to_image`, `image_to_image`);
`loader` holds them all and loads any of them.

The evaluation of a kind (prompt sets, judges, aspects it cannot measure, grid rows) belongs to the
metrics layer above this one: an evaluation context registers itself for the kinds it scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from igmu.errors import UsageError
from igmu.world.assets import assets_dir
from igmu.world.concepts import get_concept

# What `--model base` (or `world`) means: the shipped model of the kind an algorithm edits.
SHIPPED_MODEL_NAMES = ("base", "world")
# Steps and guidance that sample a generator folder, kept beside its weights.
SAMPLING_FILE = "sampling.json"
# A free-text prompt names no category; it is treated as an object unless the user says otherwise.
DEFAULT_PROMPT_CATEGORY = "object"
# diffusers' index of a pipeline folder: which pipeline class loads it, and from which components.
MODEL_INDEX_FILE = "model_index.json"
# igmu's own pipeline classes. No diffusers class has these names, so `DiffusionPipeline` cannot load
# such a folder: an IgmuGenerator is a world model, an IgmuSamplerPipeline a model whose unlearning
# lives partly outside its weights (a changed sampler, adapters kept apart).
IGMU_GENERATOR_CLASS = "IgmuGenerator"
IGMU_SAMPLER_PIPELINE = "IgmuSamplerPipeline"
# Where the UNet lives: `unet` when the weights alone carry the model, else a component no stock
# pipeline knows, so that `StableDiffusionPipeline` fails to load the folder instead of silently
# giving back the weights without the method's effect.
STOCK_UNET = "unet"
HELD_UNET = "igmu_unet"
# The key of the index that records which of the two a folder is; absent in a stock index.
STOCK_WEIGHTS_KEY = "stock_weights"


class GeneratorKind:
    """Base class of the kinds; subclasses are used as classes, never instantiated."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True: targets are world concepts, whose prompt sets (forget, anchor, retain, ...) are derived
    # from the world; False: a target is any prompt, and the user gives anchors.
    world_concepts: ClassVar[bool] = False
    # The folder `--model base` loads, under the assets folder; None: this kind ships no model.
    shipped_folder_name: ClassVar[str | None] = None
    # Which hyperparameter defaults an algorithm runs with on this kind (`algorithms.base.make_params`):
    # False: the defaults rescaled for the world model (each algorithm's `Params` and `category_defaults`);
    # True: the official code's defaults for a real model (`official_defaults`, `official_category_defaults`).
    uses_official_defaults: ClassVar[bool] = False
    # Threads this kind computes on at most (`igmu.threads`); None: every CPU the process may use.
    compute_threads: ClassVar[int | None] = None

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        raise NotImplementedError

    @classmethod
    def model_index(cls, generator, stock_weights: bool = True) -> dict:
        """The folder's model_index.json: igmu's own index, read by igmu's loader only. A folder whose
        effect stock weights cannot carry names igmu's sampler pipeline and lists its components."""
        if stock_weights:
            return {"_class_name": IGMU_GENERATOR_CLASS, "kind": cls.name}
        return {"_class_name": IGMU_SAMPLER_PIPELINE, "kind": cls.name, STOCK_WEIGHTS_KEY: False,
                **component_index(generator.components(stock_weights))}

    @classmethod
    def load_folder(cls, folder: Path, device: str | None, precision: str):
        raise NotImplementedError

    @classmethod
    def shipped_folder(cls) -> Path:
        return assets_dir() / cls.shipped_folder_name

    @classmethod
    def load_shipped(cls, device: str | None = None):
        generator = cls.load_folder(cls.shipped_folder(), device, "fp32")
        generator.source = SHIPPED_MODEL_NAMES[1]
        return generator

    @classmethod
    def normalise_target(cls, target: str) -> str:
        """The target as runs record it; raises a UsageError when this kind cannot unlearn it."""
        if not target.strip():
            raise UsageError("target is empty; give the concept to unlearn, e.g. --target 'Van Gogh'")
        return target.strip()

    @classmethod
    def category_of(cls, target: str, category: str | None = None) -> str:
        return category or DEFAULT_PROMPT_CATEGORY

    @classmethod
    def check_anchor(cls, anchor: str | None) -> None:
        """Raise a UsageError when this kind takes no user-given anchor prompt."""


class WorldKind(GeneratorKind):
    """What the embedded world's generators share: targets are world concepts with derived prompts."""

    world_concepts = True
    # Measured on 2 cores (bench/threads.py, docs/benchmarks.md): a second thread speeds the world
    # UNet's forward and backward up 1.08x (its latents are 8x8), while an SD-shape UNet at 32x32
    # latents gains 1.5-1.85x from 3.5M to 220M parameters; beside a busy process, two threads made a
    # short world run 1.9-2.2x slower than one. So the world computes on one thread.
    compute_threads = 1

    @classmethod
    def normalise_target(cls, target: str) -> str:
        return get_concept(target).name

    @classmethod
    def category_of(cls, target: str, category: str | None = None) -> str:
        return get_concept(target).category

    @classmethod
    def check_anchor(cls, anchor: str | None) -> None:
        if anchor is not None:
            raise UsageError("the world model derives anchor prompts from its prompt sets; "
                             "valid: leave anchor out, or set model to a Stable Diffusion model")


def kind_names(kinds) -> str:
    return ", ".join(kind.name for kind in kinds)


def component_index(components: dict) -> dict[str, list[str]]:
    """name -> [library, class], as diffusers' model_index.json lists a pipeline's components."""
    return {name: [type(obj).__module__.split(".")[0], type(obj).__name__] for name, obj in components.items()}


def read_model_index(folder: Path) -> dict:
    path = Path(folder) / MODEL_INDEX_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def saved_with_stock_weights(folder: Path) -> bool:
    """Whether the folder's weights alone carry its model (see HELD_UNET); folders igmu did not
    write have no such key and are stock."""
    return bool(read_model_index(folder).get(STOCK_WEIGHTS_KEY, True))


def unet_component(stock_weights: bool) -> str:
    return STOCK_UNET if stock_weights else HELD_UNET


def read_sampling(folder: Path) -> dict | None:
    path = Path(folder) / SAMPLING_FILE
    return json.loads(path.read_text()) if path.is_file() else None
