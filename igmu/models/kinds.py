"""Kinds of generator. Each kind is a class that owns everything that differs between kinds: how its
folders are recognised and loaded, where its shipped model lives, what its targets are and which
category a target has. Shared code asks a generator's `kind` instead of comparing names.

The evaluation of a kind (prompt sets, judges, aspects it cannot measure, grid rows) belongs to the
metrics layer above this one: an evaluation context registers itself for the kinds it scores.

This module imports no generator implementation at load time, so that the implementations can
import it; each kind imports its implementation when it loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from igmu.errors import UsageError
from igmu.world.assets import assets_dir
from igmu.world.concepts import ALL_CONCEPTS, get_concept

# What `--model base` (or `world`) means: the shipped model of the kind an algorithm edits.
SHIPPED_MODEL_NAMES = ("base", "world")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# Steps and guidance that sample a generator folder, kept beside its weights.
SAMPLING_FILE = "sampling.json"
# A free-text prompt names no category; it is treated as an object unless the user says otherwise.
DEFAULT_PROMPT_CATEGORY = "object"
VALID_MODELS = "'base', a model folder, or a cached hub id"


class GeneratorKind:
    """Base class of the kinds; subclasses are used as classes, never instantiated."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True: targets are world concepts, whose prompt sets (forget, anchor, retain, ...) are derived
    # from the world; False: a target is any prompt, and the user gives anchors.
    world_concepts: ClassVar[bool] = False
    # The folder `--model base` loads, under the assets folder; None: this kind ships no model.
    shipped_folder_name: ClassVar[str | None] = None

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


class WorldTextToImage(WorldKind):
    """The world's text-to-image diffusion model: pixel space, 2x2 patches folded into channels."""

    name = "world"
    description = "the embedded world's text-to-image diffusion model"
    shipped_folder_name = "generator"

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        # Checked last: any other folder is read as a pixel-space diffusers folder, so that its
        # loader can name the components it lacks.
        return True

    @classmethod
    def load_folder(cls, folder: Path, device: str | None, precision: str):
        from igmu.models.text_to_image import PatchCodec, load_diffusers_folder, patch_factor

        sampling = read_sampling(folder) or read_sampling(cls.shipped_folder())
        if sampling is None:
            raise UsageError(f"model folder {str(folder)!r} has no {SAMPLING_FILE} and neither has the shipped "
                             f"world generator; valid: a folder saved by igmu")
        return load_diffusers_folder(folder, cls, device, precision, sampling,
                                     lambda unet, dtype: PatchCodec(patch_factor(unet)))


class StableDiffusion(GeneratorKind):
    """A Stable Diffusion checkpoint in diffusers layout, diffusing in its VAE's latent space."""

    name = "sd"
    description = "Stable Diffusion (a diffusers folder or a cached hub id)"
    # diffusers folders keep the scheduler's configuration but not how many steps to sample nor the
    # guidance scale; these are the values SD is commonly sampled with, and a `sampling.json` in
    # the folder (igmu writes one when it saves a model) replaces them.
    fallback_sampling: ClassVar[dict] = {"steps": 30, "guidance": 7.5}

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        return (folder / "vae").is_dir()

    @classmethod
    def load_folder(cls, folder: Path, device: str | None, precision: str):
        from igmu.models.text_to_image import VaeCodec, load_diffusers_folder

        def vae_codec(unet, dtype):
            from diffusers import AutoencoderKL

            return VaeCodec(AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, use_safetensors=True))

        sampling = read_sampling(folder) or dict(cls.fallback_sampling)
        return load_diffusers_folder(folder, cls, device, precision, sampling, vae_codec)


class WorldImageToImage(WorldKind):
    """The world's image-to-image generator: an encoder and a decoder that inpaint and outpaint renders."""

    name = "i2i"
    description = "the embedded world's image-to-image (inpainting/outpainting) generator"
    shipped_folder_name = "i2i"

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        from igmu.models.image_to_image import CONFIG_FILE

        return (folder / CONFIG_FILE).is_file()

    @classmethod
    def load_folder(cls, folder: Path, device: str | None, precision: str):
        from igmu.models.image_to_image import load_i2i_folder

        if precision != "fp32":
            raise UsageError(f"precision {precision!r}: the image-to-image generator runs in fp32; valid: fp32")
        return load_i2i_folder(folder, device)


# The order `base` is resolved in: the first shipped kind an algorithm accepts.
ALL_KINDS: tuple[type[GeneratorKind], ...] = (WorldTextToImage, WorldImageToImage, StableDiffusion)
TEXT_TO_IMAGE: tuple[type[GeneratorKind], ...] = (WorldTextToImage, StableDiffusion)
# The order folders are recognised in: the world's text-to-image model accepts any folder, so it is last.
RECOGNITION_ORDER: tuple[type[GeneratorKind], ...] = (WorldImageToImage, StableDiffusion, WorldTextToImage)


def kind_names(kinds) -> str:
    return ", ".join(kind.name for kind in kinds)


def read_sampling(folder: Path) -> dict | None:
    path = Path(folder) / SAMPLING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def kind_of(model: str, kinds=ALL_KINDS) -> type[GeneratorKind]:
    """The kind of generator `model` names, one of `kinds`, found without loading any weights."""
    found = _shipped_kind(model, kinds) if model in SHIPPED_MODEL_NAMES else _kind_at(model)
    if found not in kinds:
        raise UsageError(f"model {model!r} is {found.description} ({found.name}); this needs a generator of "
                         f"kind {kind_names(kinds)}; valid: 'base' or a model folder of that kind")
    return found


def _shipped_kind(model: str, kinds) -> type[GeneratorKind]:
    shipped = [kind for kind in kinds if kind.shipped_folder_name]
    if not shipped:
        raise UsageError(f"model {model!r}: igmu ships no generator of kind {kind_names(kinds)}; "
                         "valid: a model folder or a cached hub id")
    return shipped[0]


def _kind_at(location: str) -> type[GeneratorKind]:
    path = Path(location)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UsageError(f"refusing to load pickle file {location!r}: convert it to safetensors "
                         f"(a diffusers folder); valid: {VALID_MODELS}")
    if path.is_dir():
        return next(kind for kind in RECOGNITION_ORDER if kind.recognises(path))
    if path.exists():
        raise UsageError(f"model path {location!r} is a file; valid: {VALID_MODELS}")
    # Only Stable Diffusion loads from the local hub cache; its loader says when the id is not there.
    return StableDiffusion


def load(model: str = "base", kinds=ALL_KINDS, device: str | None = None, precision: str = "fp32"):
    """Load `model` ('base', a folder or a cached hub id) as one of `kinds`; nothing is downloaded,
    and weights load from safetensors only."""
    kind = kind_of(model, kinds)
    location = kind.shipped_folder() if model in SHIPPED_MODEL_NAMES else cached_or_local(model)
    generator = kind.load_folder(Path(location), device, precision)
    generator.source = str(model)
    return generator


def cached_or_local(location: str) -> Path:
    path = Path(location)
    if path.is_dir():
        return path
    if location.count("/") != 1 or location.startswith((".", "/")):
        raise UsageError(f"model path {location!r} does not exist; valid: {VALID_MODELS}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(location, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        raise UsageError(f"model {location!r} is neither a local folder nor in the local hub cache "
                         f"(nothing is downloaded): {type(err).__name__}") from None


def world_concept_names() -> list[str]:
    return [concept.name for concept in ALL_CONCEPTS]
