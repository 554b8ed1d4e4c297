"""v-prediction models (SD 2.x): every loss that regresses on the forward process targets the
velocity, not the noise; epsilon-prediction models (SD 1.x, the world) keep the noise."""

import pytest
import torch
import torch.nn.functional as F

from igmu.algorithms.common import diffusion_loss, noised
from igmu.algorithms.loop import run_unlearning
from igmu.models.loader import load
from igmu.run import build_unlearner

# One small step each: ESD samples x_t over a 3-step sampler; SalUn needs a batch of images.
ONE_STEP = {"esd": {"steps": 1, "batch_size": 2, "ddim_steps": 3},
            "salun": {"steps": 1, "batch_size": 2, "forget_images": 2, "retain_images": 2}}


@pytest.fixture(scope="module")
def v_sd(tmp_path_factory):
    from tiny_sd import build_tiny_sd

    folder = build_tiny_sd(tmp_path_factory.mktemp("tiny_sd_v"), prediction_type="v_prediction")
    return load(str(folder), device="cpu")


def forward_process(gen, seed: int = 0):
    torch.manual_seed(seed)
    clean, noise = torch.randn(2, *gen.latent_shape), torch.randn(2, *gen.latent_shape)
    return clean, noise, torch.tensor([10, 900])


def test_the_training_target_of_a_v_prediction_model_is_the_velocity(v_sd):
    clean, noise, t = forward_process(v_sd)
    assert v_sd.scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(v_sd.training_target(clean, noise, t), v_sd.scheduler.get_velocity(clean, noise, t))
    assert not torch.allclose(v_sd.training_target(clean, noise, t), noise)


def test_the_training_target_of_an_epsilon_model_is_the_noise(world_generator, tiny_sd_dir):
    for gen in (world_generator, load(str(tiny_sd_dir), device="cpu")):
        clean, noise, t = forward_process(gen)
        assert gen.training_target(clean, noise, t) is noise


def test_noised_and_the_diffusion_loss_regress_on_the_velocity(v_sd):
    clean = torch.randn(2, *v_sd.latent_shape)
    rng = torch.Generator().manual_seed(4)
    x_t, t, target = noised(v_sd, clean, rng)
    replay = torch.Generator().manual_seed(4)
    noise = torch.randn(clean.shape, generator=replay)
    t_again = torch.randint(0, 1000, (2,), generator=replay)
    assert torch.equal(t, t_again) and torch.allclose(x_t, v_sd.scheduler.add_noise(clean, noise, t))
    assert torch.allclose(target, v_sd.scheduler.get_velocity(clean, noise, t))
    with torch.no_grad():
        loss = diffusion_loss(v_sd, clean, ["a", "b"], torch.Generator().manual_seed(4))
        predicted = v_sd.unet(x_t, t, encoder_hidden_states=v_sd.encode_prompt(["a", "b"])).sample
    assert torch.allclose(loss, F.mse_loss(predicted, target))


@pytest.mark.parametrize("name", ["esd", "salun"])
def test_one_step_runs_on_a_v_prediction_model(v_sd, name):
    unlearner = build_unlearner(name, v_sd, "a photo of a cat", ONE_STEP[name], seed=0, anchor="a photo")
    before = {k: v.clone() for k, v in v_sd.unet.state_dict().items()}
    history = run_unlearning(unlearner)
    assert len(history) == 1 and all(torch.isfinite(torch.tensor(v)) for v in history[0].values())
    assert any(not torch.equal(before[k], v) for k, v in v_sd.unet.state_dict().items())
