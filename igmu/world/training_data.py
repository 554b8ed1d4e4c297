"""Glue between prompts and renders: the training distribution, held-out prompts, the tokenizer."""

from __future__ import annotations

import numpy as np

from igmu.world.concepts import (
    ALL_CONCEPTS,
    CHARACTER_NAMES,
    LANGUAGES,
    OBJECT_NAMES,
    STYLE_NAMES,
)
from igmu.world.prompts import TEMPLATES, PromptSpec, is_held_out, random_wording
from igmu.world.render import Scene, random_scene

MAX_PROMPT_TOKENS = 24
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}
# Shares of prompt kinds in generator training; "empty" trains the unconditional branch of CFG.
PROMPT_KIND_SHARES = {"object+style": 0.5, "object": 0.1, "style": 0.1, "character": 0.18, "empty": 0.12}
HAZARD_SHARE = 0.35


def vocabulary() -> list[str]:
    """Every word the world's prompts can contain, special tokens first."""
    words = set()
    for lang_templates in TEMPLATES.values():
        for templates in lang_templates.values():
            for template in templates:
                words.update(w for w in template.split() if not w.startswith("{"))
    for concept in ALL_CONCEPTS:
        for lang in LANGUAGES:
            for form in concept.surface_forms(lang):
                words.update(form.split())
    return list(SPECIAL_TOKENS.values()) + sorted(words)


def build_tokenizer():
    """A word-level tokenizer over the world's vocabulary, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, model_max_length=MAX_PROMPT_TOKENS,
        pad_token=SPECIAL_TOKENS["pad"], bos_token=bos, eos_token=eos, unk_token=SPECIAL_TOKENS["unk"])


def scene_for(spec: PromptSpec, rng: np.random.Generator) -> Scene:
    """A random scene that satisfies what the prompt asks for (unspecified attributes are random)."""
    if spec.kind == "empty":
        character = CHARACTER_NAMES[rng.integers(len(CHARACTER_NAMES))] if rng.random() < 0.15 else None
        return random_scene(rng, hazard=bool(rng.random() < HAZARD_SHARE), character=character)
    return random_scene(rng, object=spec.object, style=spec.style, hazard=spec.hazard, character=spec.character)


def random_spec(rng: np.random.Generator) -> PromptSpec:
    """A prompt from the training distribution (before wording is chosen)."""
    kinds = list(PROMPT_KIND_SHARES)
    kind = kinds[rng.choice(len(kinds), p=list(PROMPT_KIND_SHARES.values()))]
    hazard = bool(rng.random() < HAZARD_SHARE)
    obj = OBJECT_NAMES[rng.integers(len(OBJECT_NAMES))]
    style = STYLE_NAMES[rng.integers(len(STYLE_NAMES))]
    if kind == "character":
        return PromptSpec(character=CHARACTER_NAMES[rng.integers(len(CHARACTER_NAMES))], hazard=hazard)
    if kind == "empty":
        return PromptSpec()
    return PromptSpec(object=obj if "object" in kind else None, style=style if "style" in kind else None,
                      hazard=hazard)


def training_example(rng: np.random.Generator) -> tuple[PromptSpec, Scene]:
    """A (prompt, scene) pair for generator training; held-out prompt texts are never drawn."""
    while True:
        spec = random_spec(rng)
        if spec.kind != "empty":
            spec = random_wording(rng, spec)
        if spec.kind == "empty" or not is_held_out(spec.text):
            return spec, scene_for(spec, rng)


def held_out_specs(n: int, seed: int) -> list[PromptSpec]:
    """`n` prompts whose texts the generator never saw in training, drawn from the training mix."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        spec = random_spec(rng)
        if spec.kind == "empty":
            continue
        spec = random_wording(rng, spec)
        if is_held_out(spec.text):
            out.append(spec)
    return out
