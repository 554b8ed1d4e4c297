"""Image-to-image unlearning (Li et al., ICLR 2024): the shipped generator, the loss, the baselines,
the metrics, `igmu run` and a sweep into MLflow with a Pareto front."""

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from resume import assert_resumes_bit_for_bit

from igmu.algorithms.base import ALGORITHMS
from igmu.algorithms.encoder_unlearning import embedding_distance, like_noise
from igmu.algorithms.loop import run_unlearning
from igmu.algorithms.task import world_task
from igmu.cli.main import main
from igmu.errors import UsageError
from igmu.metrics.context import Budget
from igmu.metrics.scorecard import build_context, scorecard
from igmu.models.check import GENERATOR_TARGETS, I2I_OBJECT_TARGET, i2i_accuracy, unmet_targets
from igmu.models.image_to_image import MASK_TYPES, I2IGenerator, WorldImageToImage
from igmu.run import load_model_for
from igmu.world.concept_images import concept_images, mosaics, shows
from igmu.world.render import random_scene

I2I_ALGORITHMS = sorted(name for name, cls in ALGORITHMS.items() if WorldImageToImage in cls.generator_kinds)
TINY = {"steps": 2, "batch_size": 3, "forget_images": 4, "retain_images": 4}
TINY_BUDGET = Budget("small", forget=6, retain=8, related=0, paraphrase=0)


def tiny_generator(seed: int = 0) -> I2IGenerator:
    torch.manual_seed(seed)
    return I2IGenerator({"widths": [8, 8, 8]}).eval().requires_grad_(False)


def tiny_unlearner(name: str, target: str = "ball", seed: int = 0, **overrides):
    cls = ALGORITHMS[name]
    return cls(tiny_generator(), world_task(target), cls.Params(**{**TINY, **overrides}), seed=seed)


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_the_baselines_and_the_method_are_registered_as_image_to_image_algorithms():
    assert I2I_ALGORITHMS == ["i2i", "i2i-max-loss", "i2i-noisy-label", "i2i-random-encoder", "i2i-retain-label"]
    assert all(ALGORITHMS[n].describe()["generator_kinds"] == ["i2i"] for n in I2I_ALGORITHMS)


def test_shipped_generator_completes_held_out_renders(judges):
    # 300 renders: the bound is lowered by about two standard errors of a 300-image estimate.
    accuracy = i2i_accuracy(WorldImageToImage.load_shipped(device="cpu"), judges, 300, seed=5151)
    for mask in MASK_TYPES:
        assert accuracy[f"{mask}_object"] >= I2I_OBJECT_TARGET - 0.03, accuracy
    # An untrained generator is caught by the same check.
    untrained = i2i_accuracy(tiny_generator(), judges, 100, seed=5151)
    report = {"judges": {}, "generator": {k: 1.0 for k in GENERATOR_TARGETS}, "i2i": untrained}
    assert [line.split(":")[0] for line in unmet_targets(report)] == ["i2i center_object", "i2i half_object"]


def test_loss_matches_the_formula():
    unlearner = tiny_unlearner("i2i", alpha=0.7)
    unlearner.prepare()
    batch = unlearner.draw()
    gen, frozen = unlearner.generator, unlearner.frozen_encoder
    mask = batch["mask"]

    def squared(a, b):  # ||a - b||^2 per feature map as a mean, averaged over the maps
        return sum(((x - y) ** 2).sum() / x.numel() for x, y in zip(a, b)) / len(a)

    retain = squared(gen.encoder(gen.transform(batch["retain"], mask)), frozen(gen.transform(batch["retain"], mask)))
    forget = squared(gen.encoder(gen.transform(batch["forget"], mask)), frozen(gen.transform(batch["noise"], mask)))
    losses = unlearner.losses(batch)
    assert torch.allclose(losses["retain_loss"], retain, rtol=1e-5)
    assert torch.allclose(losses["forget_loss"], forget, rtol=1e-5)
    assert torch.allclose(losses["loss"], retain + 0.7 * forget, rtol=1e-5)
    assert forget > 0  # forget images are not their noise: the term has something to do


def test_embedding_distance_and_noise_on_tiny_tensors():
    a, b = [torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 1, 1)], [torch.zeros(1, 2, 2, 2), torch.full((1, 1, 1, 1), 3.0)]
    assert float(embedding_distance(a, b)) == pytest.approx((1.0 + 9.0) / 2)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    rng = torch.Generator().manual_seed(1)
    constant = like_noise(images, "constant", rng)
    assert torch.allclose(constant, images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images))
    for kind in ("normal", "uniform"):
        noise = like_noise(images, kind, rng)
        assert noise.min() >= 0 and noise.max() <= 1
        assert torch.allclose(noise.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=0.03)


@pytest.mark.parametrize("name", I2I_ALGORITHMS)
def test_only_the_encoder_changes(name):
    unlearner = tiny_unlearner(name)
    gen = unlearner.generator
    encoder, decoder = snapshot(gen.encoder), snapshot(gen.decoder)
    history = run_unlearning(unlearner)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert all(torch.equal(decoder[k], v) for k, v in gen.decoder.state_dict().items())
    assert any(not torch.equal(encoder[k], v) for k, v in gen.encoder.state_dict().items())


@pytest.mark.parametrize("name", I2I_ALGORITHMS)
def test_state_dict_round_trip_resumes_bit_for_bit(name):
    def fresh():
        u = tiny_unlearner(name, target="hazard", seed=3, steps=4, proxy_ratio=0.5)
        u.prepare()
        return u

    assert_resumes_bit_for_bit(fresh, lambda u: u.generator.state_dict())


def test_baseline_forget_terms_match_their_definitions():
    for name, label, sign in (("i2i-max-loss", "forget", -1), ("i2i-noisy-label", "noise", 1),
                              ("i2i-retain-label", "retain", 1)):
        unlearner = tiny_unlearner(name)
        unlearner.prepare()
        batch = unlearner.draw()
        made = unlearner.generator(batch["forget"], batch["mask"])
        assert torch.allclose(unlearner.forget_loss(batch), sign * F.mse_loss(made, batch[label]), rtol=1e-5), name


def test_image_sets_follow_the_target():
    import numpy as np

    rng = np.random.default_rng(0)
    scene = random_scene(rng, object="ball", style="ember", hazard=True)
    from igmu.world.concepts import get_concept
    assert shows(scene, get_concept("ball")) and shows(scene, get_concept("hazard"))
    assert not shows(scene, get_concept("box"))
    assert torch.equal(concept_images("ball", "forget", 3, 5), concept_images("ball", "forget", 3, 5))
    quads = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(4)])
    mosaic = mosaics(quads)[0]
    assert mosaic[0, 0, 0] == 0 and mosaic[0, 0, 3] == 1 and mosaic[0, 3, 0] == 2 and mosaic[0, 3, 3] == 3


def test_models_and_algorithms_must_match():
    with pytest.raises(UsageError, match="cannot edit a 'i2i' generator; valid kinds: world, sd"):
        ALGORITHMS["esd"](tiny_generator(), world_task("ball"))
    with pytest.raises(UsageError, match="this needs a generator of kind i2i"):
        load_model_for("i2i", "some/hub-model")


def test_the_original_model_scored_against_itself(judges):
    model = WorldImageToImage.load_shipped(device="cpu")
    card = scorecard(build_context(model, "ball", TINY_BUDGET, original=model, judges=judges))
    assert card["aspects"]["forgetting"]["score"] == 0.0 and card["aspects"]["preservation"]["score"] == 1.0
    block = card["i2i"]
    assert block["forget_similarity"] == block["original_forget_similarity"] > 0.5
    assert set(card["not_applicable"]) == {"alignment", "robustness"}


@pytest.mark.slow
def test_igmu_run_adds_the_i2i_block_and_saves_a_loadable_model(capsys, tmp_path):
    code = main(["run", "--algorithm", "i2i", "--target", "ball", "--budget", "small", "--json",
                 "--out", str(tmp_path / "run"), *[f"--set={k}={v}" for k, v in TINY.items()]])
    card = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(card["i2i"]) >= {"forget_similarity", "retain_similarity", "original_forget_similarity",
                                "original_retain_similarity"}
    assert set(card["aspects"]) == {"forgetting", "preservation"} and card["efficiency"]["steps"] == 2
    saved = load_model_for("i2i", str(tmp_path / "run" / "model"), device="cpu")
    assert saved.kind is WorldImageToImage and (tmp_path / "run" / "grid.png").is_file()
    code = main(["eval", "--model", str(tmp_path / "run" / "model"), "--target", "ball", "--budget", "small",
                 "--json"])
    again = json.loads(capsys.readouterr().out)
    assert code == 0 and again["i2i"]["forget_similarity"] == pytest.approx(card["i2i"]["forget_similarity"])
    from safetensors.torch import load_file
    changed = load_file(str(tmp_path / "run" / "changed.safetensors"))
    assert changed and all(k.startswith("encoder.") for k in changed)


@pytest.mark.slow
def test_sweep_into_mlflow_then_pareto(ray_session, tmp_path, capsys):
    from igmu.sweep.engine import run_sweep
    from igmu.sweep.file import load_sweep

    path = tmp_path / "i2i-tiny.yaml"
    path.write_text(textwrap.dedent("""
        name: i2i-tiny
        model: world
        target: ball
        algorithm: i2i
        params:
          alpha: {loguniform: [0.05, 2.0]}
          lr: {loguniform: [1.0e-4, 1.0e-2]}
          steps: 4
          batch_size: 4
          forget_images: 8
          retain_images: 8
        search: {sampler: tpe, num_samples: 2, max_concurrent: 2, seed: 0}
        objectives: {forgetting: max, preservation: max}
        early_stop: {scheduler: none, eval_every: 2}
        resources: {cpu: 1}
    """))
    sizes = {"small": {"forget": 6, "retain": 8, "related": 0, "paraphrase": 0},
             "full": {"forget": 6, "retain": 8, "related": 0, "paraphrase": 0}}
    outcome = run_sweep(load_sweep(path), storage=str(tmp_path / "results"), verbose=0,
                        extra_settings={"budget_sizes": sizes})
    assert len(outcome.rows) == 2 and all(r["status"] == "finished" for r in outcome.rows)
    assert all(0 <= r["val_forgetting"] <= 1 and 0 <= r["val_preservation"] <= 1 for r in outcome.rows)
    from mlflow.tracking import MlflowClient
    run = MlflowClient(outcome.tracking_uri).get_run(outcome.rows[0]["mlflow_run_id"])
    assert {"val_forgetting", "val_preservation", "val_quality"} <= set(run.data.metrics)
    capsys.readouterr()
    code = main(["pareto", "i2i-tiny", "--objectives", "forgetting,preservation", "--json",
                 "--storage", str(tmp_path / "results")])
    front = json.loads(capsys.readouterr().out)
    assert code == 0 and front
