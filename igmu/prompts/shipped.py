"""The shipped prompt sets for a target: forget templates filled with it, the retain prompts, its related
concepts and its paraphrases and translations."""

from __future__ import annotations

import re
from functools import cache

from igmu.errors import UsageError
from igmu.prompts.categories import canonical_category
from igmu.prompts.files import load_prompt_file
from igmu.prompts.labels import find_label
from igmu.prompts.prompt import (
    FORGET,
    FORGET_REMOVED,
    PARAPHRASE,
    RELATED,
    RETAIN,
    Prompt,
    PromptSets,
)
from igmu.prompts.spec import (
    CONCEPT_FIELD,
    MAX_RELATED,
    PROMPTS_DIR,
    RELATED_SEED_STRIDE,
    TARGET_FIELD,
    CategorySpec,
    category_spec,
    prompt_set_version,
)

SHIPPED = "shipped"
RETAIN_FILE = PROMPTS_DIR / "retain.jsonl"


def shipped_prompt_sets(target: str, category: str) -> PromptSets:
    """Every shipped set for one target of one category (canonical name or alias)."""
    name = canonical_category(category)
    spec = category_spec(name)
    if not target.strip():
        raise UsageError("target is empty; name the concept to forget")
    label = find_label(spec, target) or target.strip()
    forget = _forget(spec, label, name)
    sets = {FORGET: forget, FORGET_REMOVED: _forget_removed(spec, forget), RETAIN: retain_prompts(label),
            RELATED: _related(spec, label, name), PARAPHRASE: _paraphrase(spec, label, name)}
    return PromptSets(version=prompt_set_version(), target=label, category=name, sets=sets, source=SHIPPED)


def retain_prompts(target: str) -> tuple[Prompt, ...]:
    """The shipped retain prompts, less those that show the target itself: keeping it is not the aim."""
    names_target = re.compile(rf"(?<!\w){re.escape(target)}(?!\w)", re.IGNORECASE)
    return tuple(prompt for prompt in _shipped_retain()
                 if (prompt.label or "").casefold() != target.casefold() and not names_target.search(prompt.text))


@cache
def _shipped_retain() -> tuple[Prompt, ...]:
    return tuple(load_prompt_file(RETAIN_FILE, default_set=RETAIN))


def _fill(text: str, field: str, value: str) -> str:
    # str.replace, not str.format: a target may itself hold braces
    return text.replace(field, value)


def _forget(spec: CategorySpec, label: str, category: str) -> tuple[Prompt, ...]:
    return tuple(Prompt(_fill(t.text, TARGET_FIELD, label), t.seed, t.split, FORGET, label, category)
                 for t in spec.forget)


def _forget_removed(spec: CategorySpec, forget: tuple[Prompt, ...]) -> tuple[Prompt, ...]:
    return tuple(Prompt(t.removed, prompt.seed, prompt.split, FORGET_REMOVED)
                 for t, prompt in zip(spec.forget, forget))


def related_concepts(spec: CategorySpec, label: str) -> tuple[str, ...]:
    """The target's neighbours, or for a target without any, the first labels of its set."""
    if label in spec.related.neighbours:
        return spec.related.neighbours[label]
    return tuple(name for name in spec.labels if name.casefold() != label.casefold())[:MAX_RELATED]


def _related(spec: CategorySpec, label: str, category: str) -> tuple[Prompt, ...]:
    return tuple(Prompt(_fill(t.text, CONCEPT_FIELD, concept), t.seed + RELATED_SEED_STRIDE * index, t.split,
                        RELATED, concept, category)
                 for t in spec.related.templates for index, concept in enumerate(related_concepts(spec, label)))


def _paraphrase(spec: CategorySpec, label: str, category: str) -> tuple[Prompt, ...]:
    phrases = spec.paraphrase.concepts.get(label) or (label,)
    english = tuple(Prompt(_fill(t.text, TARGET_FIELD, phrase), t.seed, t.split, PARAPHRASE, label, category)
                    for t in spec.paraphrase.templates for phrase in phrases)
    translated = tuple(Prompt(_fill(t.text, TARGET_FIELD, translation.concepts.get(label, label)), t.seed, t.split,
                              PARAPHRASE, label, category, lang)
                       for lang, translation in spec.translations.items() for t in translation.templates)
    return english + translated
