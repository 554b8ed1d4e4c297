"""What to unlearn, as prompts: forget prompts and, aligned with them, anchor prompts (the target
removed) and pseudo prompts (the target replaced by a neighbour concept), plus retain prompts."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from igmu.errors import UsageError
from igmu.prompts import category_spec, prompt_sets_from_file, shipped_prompt_sets
from igmu.world.concepts import CHARACTER_NAMES, OBJECT_NAMES, STYLE_NAMES, get_concept
from igmu.world.prompts import PromptSpec, prompt_sets

# Unlearning sees only the validation prompts; the test split stays held out for final reports.
TRAINING_SPLIT = "validation"


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


def prompt_task(target: str, category: str, anchor: str | None = None, prompts_file: str | None = None) -> UnlearningTask:
    """A task for a real model: the bare target and its validation forget prompts (shipped templates
    or the user's file), each with its anchor (the prompt with the target removed, or with the target
    replaced by the user's anchor), and the validation retain prompts."""
    if not target.strip():
        raise UsageError("target prompt is empty; give the concept to unlearn, e.g. --target 'Van Gogh'")
    sets = (prompt_sets_from_file(prompts_file, target, category) if prompts_file
            else shipped_prompt_sets(target, category)).split(TRAINING_SPLIT).sets
    anchor_phrase = category_spec(category).anchor if anchor is None else anchor
    forget = (target, *(p.text for p in sets["forget"]))
    if anchor is None:
        anchors = (anchor_phrase, *(p.text for p in sets["forget_removed"]))
    else:
        anchors = tuple(replace_words(text, target, anchor) for text in forget)
    return UnlearningTask(target=target, category=category, forget_prompts=forget, anchor_prompts=anchors,
                          pseudo_prompts=anchors, retain_prompts=tuple(p.text for p in sets["retain"]))


def replace_words(text: str, words: str, replacement: str) -> str:
    """`text` with every case-insensitive occurrence of `words` replaced; a text without them becomes
    the replacement itself (the prompt names the target only implicitly)."""
    pattern = re.compile(re.escape(words), re.IGNORECASE)
    return " ".join(pattern.sub(replacement, text).split()) if pattern.search(text) else replacement
