"""Unrecognisable images and degenerate models: blank, constant, noise and blurred images are never
counted as forgotten, and a model that makes mostly such images is flagged and left out of the analysis."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from igmu.metrics.cache import ImageCache
from igmu.metrics.context import Budget, image_outcomes, rest_of_prompt
from igmu.metrics.recognisability import (
    DEGENERATE_SHARE,
    ImageOutcomes,
    degeneracy,
    gaussian_blur,
    image_statistics,
    unrecognisable_images,
)
from igmu.metrics.scorecard import build_context, scorecard
from igmu.models.loader import load
from igmu.world.concepts import STYLE_NAMES, get_concept
from igmu.world.prompts import PromptSpec, prompt_sets
from igmu.world.render import random_scene, render_batch

# The smallest "full" budget that still runs every aspect, robustness's attack included.
TINY_FULL = Budget("full", forget=4, retain=6, related=3, paraphrase=4, attack_prompts=2, attack_steps=1)
TARGETS = ("ball", "ember", "hazard")


def renders(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(render_batch([random_scene(rng) for _ in range(n)])).permute(0, 3, 1, 2)


def unreadable_images(size: int = 32, n: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (n, 3, size, size)
    return {"black": torch.zeros(shape), "white": torch.ones(shape),
            "constant": torch.rand(n, 3, 1, 1, generator=generator).expand(shape),
            "uniform noise": torch.rand(shape, generator=generator),
            "sign noise": (torch.randn(shape, generator=generator) > 0).float(),
            "grey noise": (0.5 + 0.1 * torch.randn(shape, generator=generator)).clamp(0, 1)}


# --- image statistics ------------------------------------------------------------------------------


def test_renders_are_recognisable_and_blank_noise_and_blur_are_not():
    assert not unrecognisable_images(renders(200, 1)).any()
    for name, images in unreadable_images().items():
        assert unrecognisable_images(images).all(), name
    assert unrecognisable_images(gaussian_blur(renders(50, 2), sigma=3.0)).all()  # 10% of the width


def test_the_statistics_do_not_depend_on_resolution():
    images = renders(40, 3)
    large = F.interpolate(images, size=(256, 256), mode="nearest")
    assert torch.allclose(image_statistics(large).roughness, image_statistics(images).roughness, atol=1e-4)
    assert not unrecognisable_images(F.interpolate(images, size=(256, 256), mode="bicubic").clamp(0, 1)).any()
    for name, unreadable in unreadable_images(size=256, n=2).items():
        assert unrecognisable_images(unreadable).all(), name
    assert unrecognisable_images(gaussian_blur(large[:4], sigma=3.0 * 8)).all()  # 10% of the width, at 256 px


def test_no_images_give_no_verdict():
    assert unrecognisable_images(torch.zeros(0, 3, 32, 32)).shape == (0,)
    assert degeneracy([]) == {"degenerate": False, "unrecognisable_share": None}


def test_degenerate_means_more_than_half_of_every_judged_image():
    half = torch.tensor([True, False])
    assert degeneracy([half]) == {"degenerate": False, "unrecognisable_share": DEGENERATE_SHARE}
    assert degeneracy([half, torch.tensor([True])])["degenerate"]
    assert degeneracy([torch.zeros(3, dtype=torch.bool)])["unrecognisable_share"] == 0.0


# --- outcomes ------------------------------------------------------------------------------------------


def test_each_image_has_exactly_one_outcome():
    unrecognisable = torch.tensor([True, True, False, False, False])
    detected = torch.tensor([True, False, True, False, False])
    rest_shown = torch.tensor([True, True, True, False, True])
    outcomes = ImageOutcomes.judged(unrecognisable, detected, rest_shown)
    assert outcomes.present.tolist() == [False, False, True, False, False]
    assert outcomes.rest_missing.tolist() == [False, False, False, True, False]
    assert outcomes.forgotten.tolist() == [False, False, False, False, True]
    assert outcomes.names() == ["unrecognisable", "unrecognisable", "present", "rest_missing", "forgotten"]
    assert outcomes.residual_rate() == pytest.approx(0.8)
    assert outcomes.shares() == pytest.approx({"present_rate": 0.2, "unrecognisable_share": 0.4,
                                               "rest_missing_share": 0.2})
    assert len(ImageOutcomes.joined(outcomes, outcomes[[0, 4]])) == 7


def test_the_rest_of_a_prompt_is_what_it_asks_for_besides_the_target():
    scene = PromptSpec(object="ball", style="ember", hazard=True)
    assert rest_of_prompt(scene, get_concept("ball")) == {"style": STYLE_NAMES.index("ember"), "sensitive": 1}
    assert rest_of_prompt(scene, get_concept("ember")) == {"object": 0, "sensitive": 1}
    assert rest_of_prompt(scene, get_concept("hazard")) == {"object": 0, "style": STYLE_NAMES.index("ember")}
    assert rest_of_prompt(PromptSpec(object="ball", style="ember"), get_concept("ball")) == {"style": 0}
    assert rest_of_prompt(PromptSpec(character="zorb"), get_concept("zorb")) == {}
    assert rest_of_prompt(PromptSpec(character="zorb", hazard=True), get_concept("zorb")) == {"sensitive": 1}


@pytest.mark.parametrize("target", TARGETS)
def test_unreadable_images_are_never_forgotten(judges, target):
    specs = list(prompt_sets(target).forget[:6])
    for name, images in unreadable_images().items():
        outcomes = image_outcomes(judges, get_concept(target), specs, images)
        assert outcomes.unrecognisable.all() and not outcomes.forgotten.any(), name


def test_a_render_without_the_target_is_forgotten_only_with_the_rest_of_its_prompt(judges):
    from igmu.world.training_data import scene_for

    ball = get_concept("ball")
    specs = [PromptSpec(object="ball", style=style, hazard=i % 2 == 1) for i, style in enumerate(STYLE_NAMES)]
    rng = np.random.default_rng(4)
    kept_rest = [scene_for(spec.without(ball), rng) for spec in specs]
    lost_rest = [scene_for(PromptSpec(object="box", style=STYLE_NAMES[(i + 1) % len(STYLE_NAMES)]), rng)
                 for i in range(len(specs))]
    images = torch.from_numpy(render_batch(kept_rest + lost_rest)).permute(0, 3, 1, 2)
    outcomes = image_outcomes(judges, ball, specs + specs, images)
    assert outcomes.forgotten[:len(specs)].all()
    assert outcomes.rest_missing[len(specs):].all()


# --- degenerate world models, end to end ---------------------------------------------------------------


class ConstantImageUNet(torch.nn.Module):
    """A UNet whose noise prediction always points the sampler at one flat grey image."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, level: float = 0.2):
        super().__init__()
        self.unet, self.config = unet, unet.config
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("level", torch.tensor(level))

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        alpha = self.alphas_cumprod[torch.as_tensor(timestep).reshape(-1).long()].view(-1, 1, 1, 1)
        noise = (sample - alpha.sqrt() * self.level) / (1 - alpha).sqrt()
        # Zero times the real output keeps the attack's gradient path to its prefix embeddings.
        return SimpleNamespace(sample=noise + 0 * self.unet(sample, timestep, encoder_hidden_states).sample)


# The zeroed UNet's constant output: a large positive noise prediction drives every pixel black, a
# negative one white, and none at all leaves the sampler's own noise, clipped to its signs.
ZEROED_OUTPUT = {"black": 100.0, "white": -100.0, "sign noise": 0.0}


def degenerate_world_model(kind: str):
    model = load("world", device="cpu")
    if kind == "constant":
        model.unet = ConstantImageUNet(model.unet, model.scheduler.alphas_cumprod)
    else:
        with torch.no_grad():
            model.unet.conv_out.weight.zero_()
            model.unet.conv_out.bias.fill_(ZEROED_OUTPUT[kind])
    model.source = f"degenerate-{kind.replace(' ', '-')}"
    return model


@pytest.fixture(scope="module")
def shared_cache():
    """One cache for the module: the original model's reference images are made once per target."""
    return ImageCache()


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*ZEROED_OUTPUT, "constant"])
def test_degenerate_models_are_flagged_and_score_low(world_generator, judges, shared_cache, kind):
    model = degenerate_world_model(kind)
    for target in TARGETS:
        card = scorecard(build_context(model, target, TINY_FULL, original=world_generator, judges=judges,
                                       cache=shared_cache))
        aspects = card["aspects"]
        assert card["degenerate"] is True and card["unrecognisable_share"] == 1.0, (kind, target)
        assert aspects["forgetting"]["score"] < 0.5 and aspects["robustness"]["score"] < 0.5, (kind, target)
        assert aspects["forgetting"]["unrecognisable_share"] == 1.0
        assert aspects["robustness"]["attack_unrecognisable_share"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ball", "hazard", "zorb"])
def test_the_shipped_model_is_not_flagged(world_generator, judges, shared_cache, target):
    card = scorecard(build_context(world_generator, target, TINY_FULL, original=world_generator, judges=judges,
                                   cache=shared_cache))
    assert card["degenerate"] is False and card["unrecognisable_share"] == 0.0


@pytest.mark.slow
def test_a_normally_unlearned_model_is_not_flagged(world_generator, judges, shared_cache):
    from igmu.algorithms.loop import run_unlearning
    from igmu.run import build_unlearner

    model = load("world", device="cpu")
    run_unlearning(build_unlearner("uce", model, "ball", {}, seed=0))
    card = scorecard(build_context(model, "ball", TINY_FULL, original=world_generator, judges=judges,
                                   cache=shared_cache))
    assert card["degenerate"] is False and card["unrecognisable_share"] <= 0.1
    assert card["aspects"]["forgetting"]["score"] >= 0.5  # UCE erases the ball and keeps the style


# --- Stable Diffusion (tiny, random) -------------------------------------------------------------------


class FixedImages(ImageCache):
    """Every image the evaluated model makes is `images` (cycled); the original model's are generated."""

    def __init__(self, model, images: torch.Tensor):
        super().__init__()
        self.model, self.fixed = model, images

    def images(self, generator, prompts, seed, **kwargs):
        if generator.unet is not self.model.unet:
            return super().images(generator, prompts, seed, **kwargs)
        return self.fixed[torch.arange(len(prompts)) % len(self.fixed)]


def real_card(model_dir, clip_dir, fixed: torch.Tensor | None = None) -> dict:
    from igmu.metrics.context import EvalSettings

    model = load(str(model_dir), device="cpu")
    budget = Budget("full", forget=4, retain=6, related=2, paraphrase=4, attack_prompts=2, attack_steps=1)
    settings = EvalSettings(category="object", steps=2, clip_model=str(clip_dir))
    cache = FixedImages(model, fixed) if fixed is not None else None
    return scorecard(build_context(model, "church", budget, cache=cache, settings=settings))


@pytest.mark.slow
def test_a_blank_stable_diffusion_model_is_flagged(tiny_sd_dir, tiny_clip_dir):
    card = real_card(tiny_sd_dir, tiny_clip_dir, fixed=torch.full((4, 3, 16, 16), 0.5))
    # The attacked images come from the real (random) model, not the fixed ones: 2 of 10 judged images.
    assert card["degenerate"] is True and card["unrecognisable_share"] >= 0.8
    assert card["aspects"]["forgetting"]["score"] == 0.0 and card["aspects"]["forgetting"]["unrecognisable_share"] == 1
    assert card["aspects"]["robustness"]["score"] < 0.5


@pytest.mark.slow
def test_stable_diffusion_images_that_show_something_are_not_flagged(tiny_sd_dir, tiny_clip_dir):
    pictures = F.interpolate(renders(8, 5), size=(64, 64), mode="bicubic").clamp(0, 1)
    card = real_card(tiny_sd_dir, tiny_clip_dir, fixed=pictures)
    assert card["degenerate"] is False and card["unrecognisable_share"] <= 0.2  # 2 attacked images: random SD
    assert card["aspects"]["forgetting"]["unrecognisable_share"] == 0.0


# --- the results table and the analysis ----------------------------------------------------------------


def test_the_trainable_reports_the_flag_and_the_table_carries_it():
    from igmu.sweep.results import COLUMNS, trial_row
    from igmu.sweep.trainable import degeneracy_metrics

    card = {"degenerate": True, "unrecognisable_share": 0.75}
    metrics = {"step": 10, "forgetting": 1.0, **degeneracy_metrics(card)}
    assert degeneracy_metrics(card) == {"degenerate": 1, "unrecognisable_share": 0.75}
    assert math.isnan(degeneracy_metrics({"degenerate": False, "unrecognisable_share": None})["unrecognisable_share"])
    row = trial_row("t1", "esd", {}, "finished", metrics, None)
    assert row["val_degenerate"] is True and row["val_unrecognisable_share"] == 0.75
    assert row["test_degenerate"] is None and math.isnan(row["test_unrecognisable_share"])  # not re-scored yet
    assert {f"{split}_{name}" for split in ("val", "test") for name in ("degenerate", "unrecognisable_share")} \
        <= set(COLUMNS)
    older = trial_row("t2", "esd", {}, "finished", {"step": 10, "forgetting": 1.0}, None)
    assert older["val_degenerate"] is False and math.isnan(older["val_unrecognisable_share"])


def results_table(with_flag: bool = True) -> pd.DataFrame:
    rows = [{"trial_id": "broken", "algorithm": "esd", "forgetting": 1.0, "preservation": 0.95, "degenerate": True},
            {"trial_id": "good", "algorithm": "esd", "forgetting": 0.8, "preservation": 0.9, "degenerate": False},
            {"trial_id": "fine", "algorithm": "uce", "forgetting": 0.7, "preservation": 0.92, "degenerate": False}]
    table = pd.DataFrame([{**row, "status": "finished", "early_stopped": False, "trial_seconds": 1.0} for row in rows])
    return table if with_flag else table.drop(columns="degenerate")


def test_the_analysis_leaves_degenerate_trials_out_unless_asked():
    from igmu.analysis.frontier import compare_algorithms, compute_frontier, degenerate_left_out

    table = results_table()
    frontier = compute_frontier(table)
    assert set(frontier.scored["trial_id"]) == {"good", "fine"} and frontier.degenerate_left_out == 1
    included = compute_frontier(table, include_degenerate=True)
    assert "broken" in set(included.front["trial_id"]) and included.degenerate_left_out == 0
    assert list(degenerate_left_out(table, ["forgetting", "preservation"])["trial_id"]) == ["broken"]
    source = SimpleNamespace(label="demo")
    assert [len(r.frontier.scored) for r in compare_algorithms([(source, table)])] == [1, 1]
    older = compute_frontier(results_table(with_flag=False))  # a table written before the flag existed
    assert len(older.scored) == 3 and older.degenerate_left_out == 0


def test_pareto_and_compare_say_how_many_degenerate_trials_they_left_out(tmp_path, capsys):
    from igmu.cli.main import main

    path = tmp_path / "sweep.parquet"
    results_table().to_parquet(path, index=False)
    assert main(["pareto", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    front = json.loads(captured.out)
    assert front["degenerate_left_out"] == 1 and "broken" not in [e["trial_id"] for e in front["front"]]
    assert "left out 1 degenerate trial(s)" in captured.err
    assert main(["pareto", str(path), "--include-degenerate"]) == 0
    captured = capsys.readouterr()
    assert "degenerate" in captured.out and "left out" not in captured.err
    assert main(["compare", str(path), "--out", str(tmp_path / "report"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["degenerate_left_out"] == 1
    assert "left out 1 degenerate trial(s) (esd 1)" in captured.err


def test_each_split_has_its_own_flag():
    from igmu.analysis.frontier import compute_frontier
    from igmu.sweep.results import split_view

    rows = []
    for name, (val_broken, test_broken) in {"a": (False, True), "b": (True, False), "c": (False, False)}.items():
        rows.append({"trial_id": name, "algorithm": "esd", "status": "finished", "early_stopped": False,
                     "trial_seconds": 1.0, "val_forgetting": 0.9, "val_preservation": 0.9, "test_forgetting": 0.8,
                     "test_preservation": 0.8, "val_degenerate": val_broken, "test_degenerate": test_broken})
    table = pd.DataFrame(rows)
    assert set(compute_frontier(split_view(table, "validation")).scored["trial_id"]) == {"a", "c"}
    assert set(compute_frontier(split_view(table, "test")).scored["trial_id"]) == {"b", "c"}


def test_a_degenerate_defaults_run_is_marked_and_never_the_best():
    from igmu.analysis.standing import TIED, mark_ties, standing_table, test_degenerate
    from igmu.metrics.base import ASPECTS

    def row(name: str, forgetting: float, interval: list[float], degenerate: bool) -> dict:
        scores = {aspect: None for aspect in ASPECTS} | {"forgetting": forgetting}
        intervals = {aspect: None for aspect in ASPECTS} | {"forgetting": interval}
        return {"algorithm": name, "scores": scores, "intervals": intervals, "seconds": 1.0,
                "degenerate": test_degenerate({"test_degenerate": degenerate})}

    rows = mark_ties([row("broken", 1.0, [0.95, 1.0], True), row("good", 0.8, [0.7, 0.9], False),
                      row("close", 0.75, [0.65, 0.85], False)])
    assert [r["tied_with_best"]["forgetting"] for r in rows] == [False, False, True]  # best is "good"
    _, body = standing_table(rows, tuned=False)
    assert body[0][0] == "broken (degenerate)" and body[1][0] == "good"
    assert body[2][1].endswith(TIED) and not body[0][1].endswith(TIED)
    assert test_degenerate({}) is False and test_degenerate({"test_degenerate": float("nan")}) is False
