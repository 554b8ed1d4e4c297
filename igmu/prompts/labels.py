"""Matching a target against the shipped label sets: which label it is, and which category holds it."""

from __future__ import annotations

from igmu.prompts.categories import CATEGORIES, PROMPT, SENSITIVE
from igmu.prompts.spec import CategorySpec, category_spec


def find_label(spec: CategorySpec, target: str) -> str | None:
    """The shipped spelling of a target among a spec's labels or target words, ignoring case."""
    key = target.strip().casefold()
    return next((name for name in spec.labels + spec.targets if name.casefold() == key), None)


def infer_category(target: str) -> str:
    """The category a target belongs to: a sensitive word, a shipped label, or otherwise a free prompt."""
    key = target.strip().casefold()
    if key in (word.casefold() for word in category_spec(SENSITIVE).targets):
        return SENSITIVE
    labelled = (name for name in CATEGORIES if name not in (SENSITIVE, PROMPT))
    return next((name for name in labelled if find_label(category_spec(name), target)), PROMPT)
