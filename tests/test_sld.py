"""SLD (safe latent diffusion) and what an inference-time method needs from the platform: a guidance
rule that is the formula, travels with the model, and keys the image cache."""

import json

import pytest
import torch

from igmu.algorithms.hooks import LoRA
from igmu.algorithms.loop import run_unlearning
from igmu.algorithms.sld import SLD
from igmu.errors import UsageError
from igmu.metrics.cache import model_fingerprint
from igmu.models.guidance import GUIDANCE_FILE, SafeLatentGuidance, rule_from_config
from igmu.models.kinds import HELD_UNET
from igmu.models.loader import load
from igmu.run import apply_trial, build_unlearner, sampling_cost


def rule(**changes) -> SafeLatentGuidance:
    values = {"concept": "ball", "scale": 1000.0, "warmup_fraction": 0.2, "threshold": 0.01,
              "momentum_scale": 0.3, "momentum_beta": 0.4, **changes}
    return SafeLatentGuidance(**values)


@pytest.fixture
def world():
    return load("world", device="cpu")


def test_safety_guidance_is_equations_4_to_8_computed_directly():
    torch.manual_seed(0)
    uncond, text, concept, momentum = (torch.randn(2, 3, 4, 4) * 0.01 for _ in range(4))
    sld = rule()
    gamma, new_momentum = sld.safety_guidance(uncond, text, concept, momentum)
    for i in range(uncond.numel()):
        d = float(text.flatten()[i] - concept.flatten()[i])
        mu = 0.0 if d >= 0.01 else min(abs(d) * 1000.0, 1.0)
        expected = mu * float(concept.flatten()[i] - uncond.flatten()[i]) + 0.3 * float(momentum.flatten()[i])
        assert float(gamma.flatten()[i]) == pytest.approx(expected, abs=1e-7)
    assert torch.allclose(new_momentum, 0.4 * momentum + 0.6 * gamma)


def test_no_momentum_yet_is_zero_momentum_and_a_large_threshold_steers_everywhere():
    uncond, text, concept = torch.zeros(1, 2), torch.tensor([[0.5, -0.5]]), torch.tensor([[0.0, 0.0]])
    gamma, momentum = rule(threshold=1.0, momentum_scale=0.0).safety_guidance(uncond, text, concept, None)
    assert torch.equal(gamma, torch.zeros(1, 2))  # the concept's prediction equals the unconditional one
    gamma, _ = rule(threshold=1.0, momentum_scale=0.0).safety_guidance(uncond, text, text * 2, None)
    assert torch.allclose(gamma, text * 2)  # |d| * 1000 saturates: mu = 1 on both entries


def test_warm_up_samples_as_plain_guidance_then_steers(world):
    embeddings = world.encode_prompt(["a ember ball"])
    uncond, concept = world.encode_prompt([""]), world.encode_prompt(["ball"])
    latents, t = world.initial_latents(1, seed=0), world.scheduler.timesteps[0]
    plain = world.predict_noise(latents, t, embeddings, uncond, 2.0)
    sld = rule(threshold=1.0)
    warm, momentum = sld.denoise_step(world, latents, t, 1, 10, embeddings, uncond, concept, 2.0, None)
    assert torch.allclose(warm, plain, atol=1e-5)  # step 1 of 10 is inside the 0.2 warm-up
    assert momentum.abs().sum() > 0  # the momentum builds up during the warm-up
    steered, _ = sld.denoise_step(world, latents, t, 2, 10, embeddings, uncond, concept, 2.0, None)
    assert not torch.allclose(steered, plain, atol=1e-3)


def test_sld_changes_no_weight_and_its_rule_keys_the_image_cache(world):
    original = model_fingerprint(world)
    unlearner = build_unlearner("sld", world, "hazard", {}, seed=0)
    before = {k: v.clone() for k, v in world.unet.state_dict().items()}
    assert run_unlearning(unlearner) == [{"safety_scale": 1000.0}]
    assert all(torch.equal(before[k], v) for k, v in world.unet.state_dict().items())
    assert world.guidance_rule == rule(concept="hazard")
    assert model_fingerprint(world) != original
    world.guidance_rule = rule(concept="hazard", scale=20.0)
    assert model_fingerprint(world) not in (original, model_fingerprint(load("world", device="cpu")))


def test_a_hooked_adapter_keys_the_image_cache(world):
    original = model_fingerprint(world)
    layer = world.unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")
    lora = LoRA(layer, 1, torch.Generator().manual_seed(0))
    zero_update = model_fingerprint(world)
    assert zero_update != original  # attached: a later training step would change the images
    with torch.no_grad():
        lora.up.fill_(0.1)
    assert model_fingerprint(world) != zero_update
    lora.remove()
    assert model_fingerprint(world) == original


def test_the_rule_is_saved_with_the_model_and_loaded_back_never_as_a_stock_pipeline(world, tmp_path):
    world.guidance_rule = rule(concept="hazard")
    world.save(tmp_path / "sld")
    assert json.loads((tmp_path / "sld" / GUIDANCE_FILE).read_text())["rule"] == "sld"
    assert (tmp_path / "sld" / HELD_UNET).is_dir()  # stock loaders refuse it: they would sample un-erased
    loaded = load(str(tmp_path / "sld"), device="cpu")
    assert loaded.guidance_rule == rule(concept="hazard")
    assert torch.equal(loaded.sample(["a ember ball with a hazard mark"], seed=1),
                       world.sample(["a ember ball with a hazard mark"], seed=1))


def test_a_trials_manifest_rule_is_applied_with_its_weights(world):
    apply_trial(world, {}, {"guidance": rule().config()})
    assert world.guidance_rule == rule()
    apply_trial(world, {}, {})
    assert world.guidance_rule is None


def test_a_bad_rule_config_is_a_one_line_error():
    with pytest.raises(UsageError, match="unknown guidance rule 'xyz'; valid: sld"):
        rule_from_config({"rule": "xyz"})
    with pytest.raises(UsageError, match="needs concept"):
        rule_from_config({"rule": "sld", "scale": 1.0})


@pytest.mark.slow
def test_efficiency_reports_the_sampling_overhead(world):
    unlearner = build_unlearner("sld", world, "ball", {}, seed=0)
    run_unlearning(unlearner)
    cost = sampling_cost(unlearner)
    assert cost["sampling_overhead"] > 0 and cost["sampling_seconds_per_image"] > 0
    assert world.guidance_rule == rule()  # timing without the rule put it back


def test_official_defaults_use_the_i2p_concept_for_sensitive_targets():
    from igmu.algorithms.base import make_params
    from igmu.models.text_to_image import StableDiffusion

    assert "nudity" in make_params(SLD, {}, "sensitive", StableDiffusion).concept
    assert make_params(SLD, {}, "object", StableDiffusion).concept == ""
