"""Calibration of the five-aspect scorecard on the shipped world model."""

import pytest
import torch

from igmu.metrics.attack import attack_embeddings
from igmu.metrics.cache import ImageCache
from igmu.metrics.context import BUDGET_SIZES, Budget, target_detected
from igmu.metrics.scorecard import build_context, scorecard
from igmu.models.loader import load
from igmu.world.concepts import get_concept

# The module's fixtures score the shipped model at a calibration budget (tens of seconds).
pytestmark = pytest.mark.slow

# A smaller "full" budget: every aspect, fewer images, so CI stays fast.
CI_FULL = Budget("full", forget=48, retain=48, related=24, paraphrase=24, attack_prompts=6, attack_steps=30)


@pytest.fixture(scope="module")
def original_card(world_generator, judges):
    return scorecard(build_context(world_generator, "ball", CI_FULL, original=world_generator, judges=judges))


@pytest.fixture(scope="module")
def damaged_card(world_generator, judges):
    damaged = load("world", device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for param in damaged.unet.parameters():
            param.add_(0.2 * param.std() * torch.randn_like(param))
    damaged.source = "damaged"
    return scorecard(build_context(damaged, "ball", CI_FULL, original=world_generator, judges=judges))


def test_original_model_still_shows_the_target(original_card):
    aspects = original_card["aspects"]
    assert list(aspects) == ["forgetting", "preservation", "quality", "alignment", "robustness"]
    assert aspects["forgetting"]["score"] <= 0.15
    assert aspects["preservation"]["score"] >= 0.85
    assert aspects["quality"]["score"] >= 0.8  # the original against itself, another seed
    assert aspects["alignment"]["score"] >= 0.95
    assert aspects["robustness"]["post_asr"] >= aspects["robustness"]["pre_asr"] >= 0.8
    assert aspects["robustness"]["paraphrase_residual_rate"] >= 0.7


def test_a_damaged_model_scores_clearly_lower(original_card, damaged_card):
    original, damaged = original_card["aspects"], damaged_card["aspects"]
    assert damaged["quality"]["score"] < original["quality"]["score"] - 0.2
    assert damaged["preservation"]["score"] < original["preservation"]["score"] - 0.2


def test_the_attack_raises_the_detectors_score(world_generator, judges):
    """Prompts for boxes, reference images of balls: the optimised prefix must pull towards ball."""
    ball = get_concept("ball")
    prompts = ["a neon box", "a forest box", "a ocean box", "a ember box"]
    reference = world_generator.sample(["a neon ball", "a forest ball", "a ocean ball", "a ember ball"], seed=5)
    plain = world_generator.sample(prompts, seed=9)
    embeddings, losses = attack_embeddings(world_generator, prompts, reference, steps=40, seed=0)
    attacked = world_generator.sample_embeddings(embeddings, seed=9)
    ball_index = 0
    before = judges["object"].predict(plain)["probs"][:, ball_index].mean()
    after = judges["object"].predict(attacked)["probs"][:, ball_index].mean()
    assert after > before + 0.2, (float(before), float(after))
    assert target_detected(judges, ball, attacked).sum() > target_detected(judges, ball, plain).sum()


def test_two_runs_give_identical_numbers(world_generator, judges):
    cards = []
    for _ in range(2):
        ctx = build_context(world_generator, "hazard", "small", original=world_generator, judges=judges,
                            cache=ImageCache())
        cards.append(scorecard(ctx))
    assert cards[0] == cards[1]
    assert BUDGET_SIZES["small"].forget == cards[0]["aspects"]["forgetting"]["n_images"]
