"""Every kind of generator behind one `load`: 'base' (the shipped model of the kind an algorithm
edits), a model folder of any kind, or a cached hub id; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from igmu.errors import UsageError
from igmu.models.image_to_image import WorldImageToImage
from igmu.models.kinds import SHIPPED_MODEL_NAMES, GeneratorKind, kind_names
from igmu.models.text_to_image import StableDiffusion, WorldTextToImage
from igmu.threads import use_threads

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
VALID_MODELS = "'base', a model folder, or a cached hub id"

# The order `base` is resolved in: the first shipped kind an algorithm accepts.
ALL_KINDS: tuple[type[GeneratorKind], ...] = (WorldTextToImage, WorldImageToImage, StableDiffusion)
# The order folders are recognised in: the world's text-to-image model accepts any folder, so it is last.
RECOGNITION_ORDER: tuple[type[GeneratorKind], ...] = (WorldImageToImage, StableDiffusion, WorldTextToImage)


def kind_of(model: str, kinds=ALL_KINDS) -> type[GeneratorKind]:
    """The kind of generator `model` names, one of `kinds`, found without loading any weights."""
    found = _shipped_kind(model, kinds) if model in SHIPPED_MODEL_NAMES else _kind_at(model)
    if found not in kinds:
        raise UsageError(f"model {model!r} is {found.description} ({found.name}); this needs a generator of "
                         f"kind {kind_names(kinds)}; valid: 'base' or a model folder of that kind")
    return found


def kind_named(name: str | None) -> type[GeneratorKind] | None:
    """The kind whose `name` this is (as trial settings record it); None for no name, which
    settings written before kinds were recorded have."""
    if name is None:
        return None
    found = [kind for kind in ALL_KINDS if kind.name == name]
    if not found:
        raise UsageError(f"unknown generator kind {name!r}; valid: {kind_names(ALL_KINDS)}")
    return found[0]


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
    if not looks_like_hub_id(location):
        raise UsageError(f"model path {location!r} does not exist; valid: {VALID_MODELS}")
    # Only Stable Diffusion loads from the local hub cache; `cached_or_local` says when the id is not there.
    return StableDiffusion


def check_local(model: str) -> None:
    """Fail now, before anything else is loaded, when `model` is neither shipped, a folder nor cached."""
    if model not in SHIPPED_MODEL_NAMES:
        cached_or_local(model)


def looks_like_hub_id(location: str) -> bool:
    return location.count("/") == 1 and not location.startswith((".", "/"))


def load(model: str = "base", kinds=ALL_KINDS, device: str | None = None, precision: str = "fp32"):
    """Load `model` ('base', a folder or a cached hub id) as one of `kinds`; nothing is downloaded,
    and weights load from safetensors only. Sets torch's thread count for the model's kind
    (`igmu.threads`): every command computes with what it loads."""
    kind = kind_of(model, kinds)
    location = kind.shipped_folder() if model in SHIPPED_MODEL_NAMES else cached_or_local(model)
    generator = kind.load_folder(Path(location), device, precision)
    generator.source = generator.origin = str(model)
    use_threads(kind.compute_threads)
    return generator


def cached_or_local(location: str) -> Path:
    path = Path(location)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(location, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        raise UsageError(f"model {location!r} is neither a local folder nor in the local hub cache "
                         f"(nothing is downloaded): {type(err).__name__}") from None
