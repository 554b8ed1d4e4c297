"""Image sets of a target concept for image-to-image unlearning: forget, retain and proxy renders.

The forget set is renders that show the target (its object, style, the hazard badge, or the
character); the retain set is renders that do not. The proxy set stands in for the paper's open
data (COCO) when the real retain set is not available: 2x2 mosaics of target-free renders, images
of a kind the generator never trained on that still contain no trace of the target.
"""

from __future__ import annotations

import numpy as np
import torch

from igmu.world.concepts import CHARACTER_NAMES, Concept, get_concept
from igmu.world.prompts import PromptSpec
from igmu.world.render import IMAGE_SIZE, Scene, concept_mask, random_scene, render_batch

IMAGE_SETS = ("forget", "retain", "proxy")
# Share of retain renders that show a character, as in judge training.
CHARACTER_SHARE = 0.15


def shows(scene: Scene, concept: Concept) -> bool:
    if concept.category == "object":
        return scene.object == concept.name  # a character's scene carries its character's object
    if concept.category == "style":
        return scene.style == concept.name
    if concept.category == "sensitive":
        return scene.hazard
    return scene.character == concept.name


def _forget_scene(rng: np.random.Generator, concept: Concept) -> Scene:
    if concept.category == "object":
        return random_scene(rng, object=concept.name)
    if concept.category == "style":
        return random_scene(rng, style=concept.name)
    if concept.category == "sensitive":
        return random_scene(rng, hazard=True)
    return random_scene(rng, character=concept.name)


def _other_scene(rng: np.random.Generator, concept: Concept) -> Scene:
    while True:
        character = CHARACTER_NAMES[rng.integers(len(CHARACTER_NAMES))] if rng.random() < CHARACTER_SHARE else None
        scene = random_scene(rng, character=character)
        if not shows(scene, concept):
            return scene


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def concept_images(target: str, kind: str, n: int, seed: int) -> torch.Tensor:
    """`n` images [N, 3, 32, 32] in [0, 1] of one set; the seed fixes them."""
    if kind not in IMAGE_SETS:
        raise ValueError(f"unknown image set {kind!r}; valid: {', '.join(IMAGE_SETS)}")
    concept = get_concept(target)
    rng = np.random.default_rng(seed)
    if n <= 0:
        return torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    if kind == "forget":
        return _to_tensor(render_batch([_forget_scene(rng, concept) for _ in range(n)]))
    if kind == "retain":
        return _to_tensor(render_batch([_other_scene(rng, concept) for _ in range(n)]))
    return mosaics(_to_tensor(render_batch([_other_scene(rng, concept) for _ in range(4 * n)])))


def mosaics(images: torch.Tensor) -> torch.Tensor:
    """Every four images -> one image made of a quadrant of each."""
    n, _, size, _ = images.shape
    half = size // 2
    quads = images.view(n // 4, 4, 3, size, size)
    out = torch.empty(n // 4, 3, size, size)
    out[..., :half, :half] = quads[:, 0, :, :half, :half]
    out[..., :half, half:] = quads[:, 1, :, :half, half:]
    out[..., half:, :half] = quads[:, 2, :, half:, :half]
    out[..., half:, half:] = quads[:, 3, :, half:, half:]
    return out


def masked_forget_renders(target: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`n` renders that show the target [N, 3, 32, 32] in [0, 1], the target's mask in each
    [N, 1, 32, 32] (1 where it shows) and each render's canonical prompt: segmented images of the
    concept, as MACE gets from its generator and Grounded-SAM."""
    concept = get_concept(target)
    rng = np.random.default_rng(seed)
    scenes = [_forget_scene(rng, concept) for _ in range(n)]
    masks = np.stack([concept_mask(scene, concept.category) for scene in scenes])
    prompts = [scene_prompt(scene) for scene in scenes]
    return _to_tensor(render_batch(scenes)), torch.from_numpy(masks).float()[:, None], prompts


def scene_prompt(scene: Scene) -> str:
    """The canonical English prompt that asks for `scene`."""
    if scene.character is not None:
        return PromptSpec(character=scene.character, hazard=scene.hazard).text
    return PromptSpec(object=scene.object, style=scene.style, hazard=scene.hazard).text
