"""Metrics on inputs with known answers, the image cache, and the registry contract."""

import numpy as np
import pytest
import torch

from igmu.errors import UsageError
from igmu.metrics.base import ASPECTS, METRICS, MetricResult, check_budget, metrics_for
from igmu.metrics.cache import ImageCache
from igmu.metrics.context import EvalContext, attribute_hits, can_score, context_for, spread, target_detected
from igmu.metrics.frechet import frechet_distance
from igmu.metrics.image_to_image import I2IEvalContext
from igmu.models.image_to_image import WorldImageToImage
from igmu.models.loader import ALL_KINDS
from igmu.models.text_to_image import StableDiffusion, WorldTextToImage
from igmu.world.concepts import get_concept
from igmu.world.prompts import PromptSpec
from igmu.world.render import random_scene, render_batch


def renders(n, seed, **fixed):
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, **fixed) for _ in range(n)]
    return torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2), scenes


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    torch.manual_seed(0)
    a = torch.randn(500, 8)
    a = a - a.mean(0)  # zero mean, so scaling changes only the covariance
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [frechet_distance(a, a + d) for d in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0], rel=1e-6)  # |mu shift|^2, covariance equal
    scaled = frechet_distance(a, a * 2)  # same mean, covariances S and 4S: Tr(S + 4S - 2*2S) = Tr(S)
    assert scaled == pytest.approx(float(torch.cov(a.T.double()).trace()), rel=1e-4)


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(torch.zeros(3, 2), torch.zeros(3, 4))


def test_residual_rate_of_a_judge_labelled_set(judges):
    hazard = get_concept("hazard")
    with_mark, _ = renders(30, 1, hazard=True)
    without, _ = renders(70, 2, hazard=False)
    detected = target_detected(judges, hazard, torch.cat([with_mark, without]))
    assert float(detected.float().mean()) == pytest.approx(0.30, abs=0.02)


def test_object_detector_counts_only_the_target(judges):
    balls, _ = renders(20, 3, object="ball")
    boxes, _ = renders(20, 4, object="box")
    detected = target_detected(judges, get_concept("ball"), torch.cat([balls, boxes]))
    assert detected[:20].float().mean() >= 0.95 and detected[20:].float().mean() <= 0.05


def test_attribute_hits_check_what_each_prompt_asks_for(judges):
    images, scenes = renders(10, 5)
    specs = [PromptSpec(object=s.object, style=s.style, hazard=s.hazard) for s in scenes]
    wrong = [PromptSpec(object="star" if s.object != "star" else "ball", style=s.style) for s in scenes]
    right_hits = attribute_hits(judges, specs, images)
    wrong_hits = attribute_hits(judges, wrong, images)
    assert set(right_hits) == {"object", "style", "sensitive", "character"}
    assert right_hits["character"] == []  # no prompt asks for a character
    assert sum(right_hits["object"]) == 10 and sum(wrong_hits["object"]) == 0


def test_metric_result_shape_and_bounds():
    assert MetricResult(0.5, {"n": 3}).to_json() == {"score": 0.5, "n": 3}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MetricResult(1.5)


def test_every_aspect_is_registered_with_a_documented_score():
    assert {name for context, name in METRICS if context is EvalContext} == set(ASPECTS)
    for spec in METRICS.values():
        assert "Score" in spec.doc, spec.name
    assert [m.name for m in metrics_for("small", EvalContext)] == ["forgetting", "preservation"]
    assert [m.name for m in metrics_for("full", EvalContext)] == list(ASPECTS)
    # Alignment and robustness read prompts; an image-to-image generator has none (not applicable).
    assert {m.name for m in metrics_for("small", I2IEvalContext)} == {"forgetting", "preservation"}
    assert {m.name for m in metrics_for("full", I2IEvalContext)} == {"forgetting", "preservation", "quality"}


def test_every_generator_kind_is_scored_and_an_unscored_one_is_refused_in_one_line():
    from igmu.metrics.real_context import RealEvalContext
    from igmu.models.kinds import GeneratorKind

    assert [kind for kind in ALL_KINDS if can_score(kind)] == list(ALL_KINDS)
    assert context_for(WorldTextToImage) is EvalContext and context_for(WorldImageToImage) is I2IEvalContext
    assert context_for(StableDiffusion) is RealEvalContext
    assert {name for context, name in METRICS if context is RealEvalContext} == set(ASPECTS)

    class Unscored(GeneratorKind):
        name, description = "unscored", "a kind no evaluation context scores"

    with pytest.raises(UsageError, match="scorecard currently scores world, i2i, sd models") as refused:
        context_for(Unscored, "some-model")
    assert "\n" not in str(refused.value)


def test_unknown_budget_is_a_usage_error():
    with pytest.raises(UsageError, match="valid: small, full"):
        check_budget("medium")


def test_spread_is_deterministic_and_even():
    assert spread(tuple(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread((1, 2), 5) == [1, 2] and spread((1, 2), 0) == []


def test_cache_generates_once_and_tracks_weight_changes(world_generator, tmp_path):
    cache = ImageCache(tmp_path / "images")
    first = cache.images(world_generator, ["a neon ball", "a forest box"], seed=7, steps=3)
    again = cache.images(world_generator, ["a neon ball", "a forest box"], seed=7, steps=3)
    assert cache.misses == 1 and cache.hits == 1 and torch.equal(first, again)
    on_disk = ImageCache(tmp_path / "images").images(world_generator, ["a neon ball", "a forest box"], seed=7, steps=3)
    assert torch.equal(first, on_disk)
    other_seed = cache.images(world_generator, ["a neon ball", "a forest box"], seed=8, steps=3)
    assert cache.misses == 2 and not torch.equal(first, other_seed)


class RenderCache(ImageCache):
    """Images that follow their prompts exactly: renders of the prompt's scene (known answers).
    With `erase`, the evaluated model's images leave that concept out (a perfect unlearner)."""

    def __init__(self, specs, model, erase=None):
        super().__init__()
        self.specs, self.model, self.erase = specs, model, erase

    def images(self, generator, prompts, seed, steps=None, guidance=None):
        from igmu.world.training_data import scene_for

        rng = np.random.default_rng(seed)
        scenes = []
        for text in prompts:
            spec = self.specs[text]
            if self.erase is not None and generator is self.model and spec.mentions(self.erase):
                spec = spec.without(self.erase)
            scenes.append(scene_for(spec, rng))
        return torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2)


def render_context(judges, world_generator, target, erase=False):
    from igmu.metrics.context import Budget
    from igmu.metrics.scorecard import build_context
    from igmu.models.loader import load

    model = load("world", device="cpu")
    budget = Budget("full", forget=24, retain=48, related=24, paraphrase=24, attack_prompts=0)
    ctx = build_context(model, target, budget, original=world_generator, judges=judges)
    specs = {p.text: p for specs in ctx.prompt_specs.values() for p in specs}
    ctx.cache = RenderCache(specs, model, get_concept(target) if erase else None)
    return ctx


def test_aspects_on_images_that_follow_their_prompts(judges, world_generator):
    from igmu.metrics.alignment import alignment
    from igmu.metrics.forgetting import forgetting
    from igmu.metrics.preservation import preservation
    from igmu.metrics.quality import quality

    ctx = render_context(judges, world_generator, "ball")
    assert forgetting(ctx).score == 0.0  # every forget image shows the ball
    kept = preservation(ctx)
    assert kept.score == 1.0 and kept.raw["in_domain_accuracy"] == 1.0
    assert alignment(ctx).score == 1.0 and alignment(ctx).raw["relative_change"] == 0.0
    assert quality(ctx).score >= 0.8  # two samples of one distribution


def test_aspects_of_a_perfect_unlearner(judges, world_generator):
    from igmu.metrics.alignment import alignment
    from igmu.metrics.forgetting import forgetting
    from igmu.metrics.preservation import preservation
    from igmu.metrics.quality import quality

    ctx = render_context(judges, world_generator, "hazard", erase=True)
    assert forgetting(ctx).score == 1.0 and forgetting(ctx).raw["residual_rate"] == 0.0
    assert preservation(ctx).score == 1.0
    assert alignment(ctx).score == 1.0  # object and style still rendered without the hazard
    fd = quality(ctx).raw
    # IGMU's pairing (forget prompts vs concept-removed prompts) sees the same scenes: near zero.
    assert fd["relative_fd_forget_vs_removed"] < 0.5


def test_paraphrase_residual_of_images_that_follow_their_prompts(judges, world_generator):
    from igmu.metrics.context import target_detected

    ctx = render_context(judges, world_generator, "ember")
    assert target_detected(judges, ctx.target, ctx.images("paraphrase")).float().mean() == 1.0
    erased = render_context(judges, world_generator, "hazard", erase=True)
    assert target_detected(judges, erased.target, erased.images("paraphrase")).float().mean() == 0.0
