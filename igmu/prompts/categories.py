"""The kinds of concept a prompt set can target; each kind has its own judge and shipped prompts."""

from __future__ import annotations

from igmu.errors import UsageError

SENSITIVE, OBJECT, STYLE, CELEBRITY, PROMPT = CATEGORIES = ("sensitive", "object", "style", "celebrity", "prompt")
CATEGORY_ALIASES = {"nudity": SENSITIVE, "nsfw": SENSITIVE, "artist": STYLE, "person": CELEBRITY,
                    "identity": CELEBRITY}
# Retain prompts of places and views: no label for a judge to look for, so no category of their own.
SCENE = "scene"


def canonical_category(name: str) -> str:
    """The category a name or alias stands for."""
    key = name.strip().lower()
    if key in CATEGORIES:
        return key
    if key in CATEGORY_ALIASES:
        return CATEGORY_ALIASES[key]
    aliases = ", ".join(f"{alias} ({canonical})" for alias, canonical in CATEGORY_ALIASES.items())
    raise UsageError(f"category {name!r} is not valid; valid: {', '.join(CATEGORIES)}; aliases: {aliases}")


def canonical_label_category(name: str) -> str:
    """A prompt's label category: a category, an alias, or the scene category of unlabelled retain prompts."""
    if name.strip().lower() == SCENE:
        return SCENE
    try:
        return canonical_category(name)
    except UsageError:
        raise UsageError(f"category {name!r} is not valid; valid: {', '.join(CATEGORIES + (SCENE,))}") from None
