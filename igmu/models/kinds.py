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

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        raise NotImplementedError

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


def read_sampling(folder: Path) -> dict | None:
    path = Path(folder) / SAMPLING_FILE
    return json.loads(path.read_text()) if path.is_file() else None
