"""Prompt sets for real image generators: the shipped, versioned prompts for each category of concept
(forget, forget-with-the-concept-removed, retain, related, paraphrase), and loaders for a user's own
prompt files. A data layer: it imports no model code, so anything may read prompts."""

from igmu.prompts.categories import CATEGORIES, CATEGORY_ALIASES, SCENE, canonical_category
from igmu.prompts.files import load_prompt_file
from igmu.prompts.from_file import prompt_sets_from_file
from igmu.prompts.labels import find_label, infer_category
from igmu.prompts.prompt import SET_NAMES, Prompt, PromptSets
from igmu.prompts.shipped import SHIPPED, related_concepts, retain_prompts, shipped_prompt_sets
from igmu.prompts.spec import CategorySpec, category_spec, prompt_set_version
from igmu.prompts.splits import SPLITS, TEST_SEED_START

__all__ = [
    "CATEGORIES", "CATEGORY_ALIASES", "SCENE", "SET_NAMES", "SHIPPED", "SPLITS", "TEST_SEED_START",
    "CategorySpec", "Prompt", "PromptSets", "canonical_category", "category_spec", "find_label",
    "infer_category", "load_prompt_file", "prompt_set_version", "prompt_sets_from_file", "related_concepts",
    "retain_prompts", "shipped_prompt_sets",
]
