"""What to unlearn, as prompts: forget prompts and, aligned with them, anchor prompts (the target
removed) and pseudo prompts (the target replaced by a neighbour concept), plus retain prompts."""

from __future__ import annotations

from dataclasses import dataclass, replace

from igmu.errors import UsageError
from igmu.world.concepts import CHARACTER_NAMES, OBJECT_NAMES, STYLE_NAMES, get_concept
from igmu.world.prompts import PromptSpec, prompt_sets

# SD default when the user names no retain prompts: generic scenes unrelated to typical targets.
DEFAULT_SD_RETAIN = ("a photo of a dog", "a photo of a house", "a painting of a landscape",
                     "a photo of a car", "a bowl of fruit")


@dataclass(frozen=True)
class UnlearningTask:
    target: str
    category: str
    forget_prompts: tuple[str, ...]
    anchor_prompts: tuple[str, ...]
    pseudo_prompts: tuple[str, ...]
    retain_prompts: tuple[str, ...]

    def __post_init__(self):
        n = len(self.forget_prompts)
        if not n or len(self.anchor_prompts) != n or len(self.pseudo_prompts) != n:
            raise ValueError("forget, anchor and pseudo prompts must be non-empty and aligned")
        if not self.retain_prompts:
            raise ValueError("an unlearning task needs retain prompts")


def _neighbour(names: tuple[str, ...], name: str) -> str:
    """SalUn's random labelling for classes: the next class, (c + 1) mod C."""
    return names[(names.index(name) + 1) % len(names)]


def _pseudo(spec: PromptSpec, category: str, name: str) -> PromptSpec:
    if category == "object":
        return replace(spec, object=_neighbour(OBJECT_NAMES, name))
    if category == "style":
        return replace(spec, style=_neighbour(STYLE_NAMES, name))
    if category == "character":
        return replace(spec, character=_neighbour(CHARACTER_NAMES, name))
    return replace(spec, hazard=False)  # SalUn's NSFW pseudo prompt: the same scene, clothed


def world_task(target: str) -> UnlearningTask:
    concept = get_concept(target)
    sets = prompt_sets(concept.name)
    forget = sets.forget
    return UnlearningTask(
        target=concept.name, category=concept.category,
        forget_prompts=tuple(p.text for p in forget),
        anchor_prompts=tuple(p.without(concept).text for p in forget),
        pseudo_prompts=tuple(_pseudo(p, concept.category, concept.name).text for p in forget),
        retain_prompts=tuple(p.text for p in sets.retain))


def prompt_task(target: str, category: str, anchor: str = "", retain: tuple[str, ...] = ()) -> UnlearningTask:
    """A task for a Stable Diffusion model: any prompt, with an anchor (default: the empty prompt)."""
    if not target.strip():
        raise UsageError("target prompt is empty; give the concept to unlearn, e.g. --target 'Van Gogh'")
    return UnlearningTask(target=target, category=category, forget_prompts=(target,), anchor_prompts=(anchor,),
                          pseudo_prompts=(anchor,), retain_prompts=tuple(retain) or DEFAULT_SD_RETAIN)
