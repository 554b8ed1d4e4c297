"""The concept world: rendering, concepts and prompt sets."""

import numpy as np
import pytest

from igmu.errors import UsageError
from igmu.world.concepts import ALL_CONCEPTS, CATEGORIES, CHARACTER_NAMES, get_concept
from igmu.world.prompts import is_held_out, prompt_sets
from igmu.world.render import IMAGE_SIZE, random_scene, render
from igmu.world.training_data import build_tokenizer, held_out_specs, training_example


def test_rendering_is_deterministic_per_seed():
    first = render(random_scene(np.random.default_rng(5)))
    again = render(random_scene(np.random.default_rng(5)))
    other = render(random_scene(np.random.default_rng(6)))
    assert first.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.1
    assert 0.0 <= first.min() and first.max() <= 1.0


def test_every_object_and_style_changes_the_image():
    rng = np.random.default_rng(0)
    base = random_scene(rng, object="ball", style="ember", hazard=False)
    images = {}
    from dataclasses import replace
    for obj in ("ball", "box", "pyramid", "kite", "cross", "ring", "moon", "star"):
        images[obj] = render(replace(base, object=obj))
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(images[a] - images[b]).sum() > 5.0, (a, b)


def test_hazard_and_character_detail_are_visible():
    from dataclasses import replace
    scene = random_scene(np.random.default_rng(1), object="ball", style="neon", hazard=False)
    with_badge = render(replace(scene, hazard=True))
    with_eyes = render(replace(scene, character="zorb"))
    plain = render(scene)
    assert np.abs(with_badge - plain).sum() > 20
    assert np.abs(with_eyes - plain).sum() > 3


def test_concept_catalogue_covers_the_taxonomy():
    categories = {c.category for c in ALL_CONCEPTS}
    assert categories == set(CATEGORIES)
    assert sum(c.category == "object" for c in ALL_CONCEPTS) >= 8
    assert sum(c.category == "style" for c in ALL_CONCEPTS) >= 6
    assert len(CHARACTER_NAMES) >= 3
    names = {c.name for c in ALL_CONCEPTS}
    for concept in ALL_CONCEPTS:
        assert set(concept.related) <= names and concept.name not in concept.related
        assert len(concept.translations) >= 2 and concept.synonyms


def test_unknown_concept_suggests_the_closest_names():
    with pytest.raises(UsageError, match="did you mean ball"):
        get_concept("bal")


@pytest.mark.parametrize("target", [c.name for c in ALL_CONCEPTS])
def test_prompt_sets_are_disjoint_and_name_the_target(target):
    concept = get_concept(target)
    sets = prompt_sets(target)
    assert sets.forget and sets.retain and sets.related and sets.paraphrase
    assert not {p.text for p in sets.forget} & {p.text for p in sets.retain}
    assert all(p.mentions(concept) for p in sets.forget + sets.paraphrase)
    assert not any(p.mentions(concept) for p in sets.retain + sets.related)
    # Paraphrases say the target without its canonical English word.
    assert all(concept.name not in p.text.split() for p in sets.paraphrase)
    assert sets.to_json() == prompt_sets(target).to_json()


def split_texts(target: str, split: str) -> dict[str, set[str]]:
    """Every text an evaluation of `target` on `split` renders, by prompt set: the four sets, and the
    forget prompts with the target taken out (what quality and alignment compare against)."""
    concept, sets = get_concept(target), prompt_sets(target, split)
    texts = {name: {p.text for p in getattr(sets, name)} for name in ("forget", "retain", "related", "paraphrase")}
    texts["forget_removed"] = {p.without(concept).text for p in sets.forget}
    return texts


@pytest.mark.parametrize("target", [c.name for c in ALL_CONCEPTS])
def test_the_test_split_renders_every_set_and_shares_no_text_with_validation(target):
    validation, test = split_texts(target, "validation"), split_texts(target, "test")
    for name, texts in test.items():
        assert texts, (target, name)
        assert len(texts) >= len(validation[name]) or name == "forget_removed", (target, name)
    seen = set().union(*validation.values()) - {""}  # a character's scene without it is the empty prompt
    assert not (set().union(*test.values()) - {""}) & seen


def test_removing_the_target_word_keeps_the_rest_of_the_prompt():
    forget = prompt_sets("hazard").forget[0]
    removed = forget.without(get_concept("hazard"))
    assert "hazard" in forget.text and "hazard" not in removed.text
    assert removed.object == forget.object and removed.style == forget.style


def test_tokenizer_knows_every_word_of_every_prompt():
    tokenizer = build_tokenizer()
    rng = np.random.default_rng(0)
    texts = [training_example(rng)[0].text for _ in range(300)]
    texts += [p.text for c in ALL_CONCEPTS for p in prompt_sets(c.name).paraphrase]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert all(row[-1] in (tokenizer.pad_token_id, tokenizer.eos_token_id) for row in ids)


def test_held_out_prompts_never_appear_in_training():
    rng = np.random.default_rng(0)
    trained = {training_example(rng)[0].text for _ in range(2000)}
    held = {s.text for s in held_out_specs(100, seed=3)}
    assert held and all(is_held_out(t) for t in held)
    assert not trained & held
