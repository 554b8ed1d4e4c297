"""SA (Selective Amnesia): the Fisher information, the EWC penalty and the three-term loss, each
against its formula computed here, and which parameters move."""

import pytest
import torch
import torch.nn.functional as F

from igmu.algorithms.base import make_params
from igmu.algorithms.common import diagonal_fisher, ewc_penalty, training_images
from igmu.algorithms.loop import run_unlearning
from igmu.algorithms.sa import SA, stratified_timesteps
from igmu.models.loader import load
from igmu.models.text_to_image import StableDiffusion
from igmu.run import build_unlearner

# Two surrogate and two replay images, three Fisher timesteps in parts of two: seconds on the world.
TINY = {"steps": 2, "batch_size": 2, "anchor_images": 2, "retain_images": 2, "fisher_timesteps": 3,
        "fisher_pass_timesteps": 2}


@pytest.fixture
def world():
    return load("world", device="cpu")


def prepared_sa(world, target="ball", **overrides):
    sa = build_unlearner("sa", world, target, {**TINY, **overrides}, seed=0)
    sa.prepare()
    return sa


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_diagonal_fisher_is_the_mean_of_squared_per_sample_gradients():
    # l_n(w) = (w . x_n - y_n)^2 has the gradient 2 (w . x_n - y_n) x_n, written out here.
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    xs = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 1.0]])
    ys = torch.tensor([1.0, -2.0, 0.5])
    fisher = diagonal_fisher({"w": w}, ([(w @ x - y) ** 2] for x, y in zip(xs, ys)))
    grads = torch.stack([2 * (w.detach() @ x - y) * x for x, y in zip(xs, ys)])
    assert torch.allclose(fisher["w"], grads.pow(2).mean(0))


def test_diagonal_fisher_sums_a_samples_parts_before_squaring():
    # One sample whose loss comes in two parts with opposite gradients: its gradient is zero.
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    fisher = diagonal_fisher({"w": w}, [[3 * w.sum(), -3 * w.sum()]])
    assert torch.equal(fisher["w"], torch.zeros(2))
    # Squaring each part first would have given 9 + 9.
    assert torch.allclose(diagonal_fisher({"w": w}, [[3 * w.sum()], [-3 * w.sum()]])["w"], torch.full((2,), 9.0))


def test_ewc_penalty_is_zero_at_theta_star_and_grows_with_the_distance():
    star = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5]])}
    fisher = {"a": torch.tensor([2.0, 0.5]), "b": torch.tensor([[4.0]])}
    delta = {"a": torch.tensor([0.1, -0.3]), "b": torch.tensor([[0.2]])}

    def at(scale):
        params = {n: torch.nn.Parameter(star[n] + scale * delta[n]) for n in star}
        return float(ewc_penalty(params, fisher, star).detach())

    expected = sum(float((fisher[n] * delta[n] ** 2).sum()) for n in star)
    assert at(0.0) == 0.0
    assert at(1.0) == pytest.approx(expected)
    assert at(2.0) == pytest.approx(4 * expected)  # quadratic in the distance
    assert 0.0 < at(0.5) < at(1.0) < at(2.0)


def test_stratified_timesteps_draw_one_timestep_in_each_stratum():
    t = stratified_timesteps(1000, 10, torch.Generator().manual_seed(0))
    assert t.tolist() == sorted(t.tolist()) and len(t) == 10
    assert all(100 * k <= int(v) < 100 * (k + 1) for k, v in enumerate(t))
    assert torch.equal(stratified_timesteps(5, 5, torch.Generator().manual_seed(1)), torch.arange(5))


def test_sa_fisher_is_the_mean_square_of_each_replay_images_timestep_summed_gradient(world):
    sa = prepared_sa(world)
    sa.rng.manual_seed(sa.seed)  # the state prepare() computed F from: nothing drew from it before
    state = sa.rng.get_state()
    fisher = sa.fisher_information()
    sa.rng.set_state(state)
    # Written out: per replay image, T/K times the sum over K stratified timesteps of the per-timestep
    # denoising loss, its gradient taken in one pass (the algorithm splits it into parts of 2).
    params = list(sa.trained.values())
    total, k = 1000, sa.params.fisher_timesteps
    squares = [torch.zeros_like(p) for p in params]
    for n in range(len(sa.replay.latents)):
        t = stratified_timesteps(total, k, sa.rng)
        clean = sa.replay.latents[n:n + 1].repeat(k, 1, 1, 1)
        noise = torch.randn(clean.shape, generator=sa.rng)
        x_t = world.scheduler.add_noise(clean, noise, t)
        cond = world.encode_prompt([sa.task.retain_prompts[sa.replay.index[n]]] * k)
        per_timestep = ((world.unet(x_t, t, encoder_hidden_states=cond).sample - noise) ** 2).mean(dim=(1, 2, 3))
        grads = torch.autograd.grad(total / k * per_timestep.sum(), params, allow_unused=True)
        squares = [s + (g if g is not None else 0) ** 2 for s, g in zip(squares, grads)]
    for (name, f), s in zip(fisher.items(), squares):
        expected = s / len(sa.replay.latents)
        # fp32 sums in another order (parts of 2 against one pass): relative to the tensor's scale.
        assert torch.allclose(f, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max())), name
    assert any(f.abs().sum() > 0 for f in fisher.values())
    # prepare() kept this F, and theta* = the original weights.
    assert all(torch.allclose(sa.fisher[n], fisher[n], rtol=1e-5, atol=1e-12) for n in fisher)
    assert all(torch.equal(sa.original[n], p.detach()) for n, p in sa.trained.items())


def test_sa_loss_is_the_three_term_formula(world):
    # The full UNet, so the penalty written out below sums over every parameter, as the official does.
    sa = prepared_sa(world, ewc_weight=3.0, replay_weight=0.7, train_method="full")
    assert float(sa.losses(sa.draw())["ewc_penalty"].detach()) == 0.0  # theta = theta* before any step
    with torch.no_grad():  # move away from theta* so the penalty counts
        for p in sa.trained.values():
            p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    state = sa.rng.get_state()
    batch = sa.draw()
    forget, replay = batch["forget"], batch["replay"]
    # The surrogate half: images of the pseudo prompts (a neighbour object), labelled with forget prompts.
    assert all("ball" in prompt for prompt in forget["prompts"])
    assert all("ball" not in prompt for prompt in sa.surrogate_prompts)
    assert set(replay["prompts"]) <= set(sa.task.retain_prompts)
    with torch.no_grad():
        l_forget = F.mse_loss(world.unet(forget["x_t"], forget["t"],
                                         encoder_hidden_states=world.encode_prompt(forget["prompts"])).sample,
                              forget["target"])
        l_replay = F.mse_loss(world.unet(replay["x_t"], replay["t"],
                                         encoder_hidden_states=world.encode_prompt(replay["prompts"])).sample,
                              replay["target"])
        l_ewc = sum((sa.fisher[n] * (p - sa.original[n]) ** 2).sum() for n, p in world.unet.named_parameters())
    expected = l_forget + 0.7 * l_replay + 3.0 * l_ewc
    assert float(l_ewc) > 0
    sa.rng.set_state(state)
    losses = sa.step()
    assert losses["forget_loss"] == pytest.approx(float(l_forget), rel=1e-5)
    assert losses["replay_loss"] == pytest.approx(float(l_replay), rel=1e-5)
    assert losses["ewc_penalty"] == pytest.approx(float(l_ewc), rel=1e-4)
    assert losses["loss"] == pytest.approx(float(expected), rel=1e-4)


def test_sa_noises_the_surrogate_images_by_the_forward_process(world):
    sa = prepared_sa(world)
    state = sa.rng.get_state()
    forget = sa.draw()["forget"]
    sa.rng.set_state(state)
    chosen = torch.randint(0, len(sa.surrogate.index), (2,), generator=sa.rng).tolist()
    clean = sa.surrogate.latents[chosen]
    noise = torch.randn(clean.shape, generator=sa.rng)
    t = torch.randint(0, 1000, (2,), generator=sa.rng)
    assert torch.equal(forget["t"], t) and torch.equal(forget["target"], noise)
    assert torch.allclose(forget["x_t"], world.scheduler.add_noise(clean, noise, t))
    assert forget["prompts"] == [sa.task.forget_prompts[sa.surrogate.index[i]] for i in chosen]


@pytest.mark.parametrize("anchor", ["pseudo", "anchor"])
def test_sa_surrogate_images_are_the_original_models_images_of_the_surrogate_prompts(world, anchor):
    sa = prepared_sa(world, anchor=anchor)
    prompts = sa.task.pseudo_prompts if anchor == "pseudo" else sa.task.anchor_prompts
    assert sa.surrogate_prompts == prompts
    expected = training_images(world, [prompts[i] for i in sa.surrogate.index], seed=1)
    assert torch.equal(sa.surrogate.latents, expected)


@pytest.mark.parametrize("train_method, allowed", [
    ("xattn", lambda name: "attn2" in name),
    ("noxattn", lambda name: "attn2" not in name and name.split(".")[0] not in
     ("time_embedding", "conv_norm_out", "conv_out")),
])
def test_sa_changes_only_the_declared_parameters(world, train_method, allowed):
    sa = build_unlearner("sa", world, "ball", {**TINY, "train_method": train_method}, seed=0)
    unet_before, text_before = snapshot(world.unet), snapshot(world.text_encoder)
    run_unlearning(sa)
    changed = [k for k, v in world.unet.state_dict().items() if not torch.equal(unet_before[k], v)]
    assert changed and all(allowed(k) for k in changed)
    assert all(torch.equal(text_before[k], v) for k, v in world.text_encoder.state_dict().items())
    assert set(sa.fisher) == set(sa.trained) and all(allowed(k) for k in sa.fisher)


def test_sa_official_defaults_are_the_scaled_four_gpu_recipe():
    official = make_params(SA, {}, "celebrity", StableDiffusion)
    assert official.lr == pytest.approx(1e-5 * 4 * 4) and official.batch_size == 16
    assert official.steps == 200 * 63 and official.ewc_weight == 50.0 and official.replay_weight == 1.0
    assert official.train_method == "full" and official.fisher_timesteps == 1000
    nudity = make_params(SA, {}, "sensitive", StableDiffusion)
    assert nudity.train_method == "noxattn" and nudity.steps == 500 * 63
