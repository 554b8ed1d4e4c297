"""Prompt sets from a user's file: the sets it holds replace the shipped ones of the same name."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from igmu.errors import UsageError
from igmu.prompts.files import load_prompt_file
from igmu.prompts.prompt import FORGET, FORGET_REMOVED, SET_NAMES, Prompt, PromptSets
from igmu.prompts.shipped import shipped_prompt_sets
from igmu.prompts.spec import category_spec

# What is left of a prompt once words are cut out of it: runs of spaces, and commas or spaces at the ends.
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])")
_REPEATED_COMMAS = re.compile(r"(,\s*)+,")
_ENDS = " ,;:"


def prompt_sets_from_file(path: str | Path, target: str, category: str) -> PromptSets:
    """The shipped sets for the target, with every set the file holds in place of the shipped one."""
    shipped = shipped_prompt_sets(target, category)
    from_file = _by_set(load_prompt_file(path), shipped)
    if FORGET_REMOVED in from_file and len(from_file[FORGET_REMOVED]) != len(from_file.get(FORGET, ())):
        raise UsageError(f"{path}: {len(from_file[FORGET_REMOVED])} {FORGET_REMOVED} prompts for "
                         f"{len(from_file.get(FORGET, ()))} {FORGET} prompts in the file; they pair up one to one")
    if FORGET in from_file and FORGET_REMOVED not in from_file:
        from_file[FORGET_REMOVED] = tuple(_removed(prompt, shipped) for prompt in from_file[FORGET])
    return replace(shipped, sets={**shipped.sets, **from_file}, source=str(path))


def _by_set(prompts: list[Prompt], shipped: PromptSets) -> dict[str, tuple[Prompt, ...]]:
    """The file's prompts grouped by set, in file order; forget prompts name the target unless they say."""
    grouped: dict[str, list[Prompt]] = {}
    for prompt in prompts:
        if prompt.set == FORGET:
            prompt = replace(prompt, label=prompt.label or shipped.target, category=prompt.category or shipped.category)
        grouped.setdefault(prompt.set, []).append(prompt)
    return {name: tuple(grouped[name]) for name in SET_NAMES if name in grouped}


def _removed(prompt: Prompt, shipped: PromptSets) -> Prompt:
    spec = category_spec(shipped.category)
    text = remove_words(prompt.text, (shipped.target,) + spec.targets)
    return replace(prompt, text=text if any(c.isalnum() for c in text) else spec.anchor, set=FORGET_REMOVED,
                   label=None, category=None)


def remove_words(text: str, words: tuple[str, ...]) -> str:
    """The text without any of the words (whole words, any case), tidied where they were cut out."""
    # longest first, so that a phrase goes as a whole before any shorter word inside it
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True) if word.strip())
    cut = re.sub(rf"(?<!\w)(?:{alternatives})(?!\w)", " ", text, flags=re.IGNORECASE)
    cut = _REPEATED_COMMAS.sub(",", _SPACE_BEFORE_PUNCTUATION.sub(r"\1", _SPACES.sub(" ", cut)))
    return cut.strip(_ENDS)
