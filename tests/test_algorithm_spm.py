"""SPM: the membrane (a rank-r LoRA in the transformer blocks), its loss, its fusion and its schedule."""

import math

import pytest
import torch
import torch.nn.functional as F

from igmu.algorithms.common import cosine_with_restarts
from igmu.algorithms.hooks import LoRA, lora_disabled, transformer_block_layers
from igmu.algorithms.loop import run_unlearning
from igmu.algorithms.spm import SPM, erase_target, sample_anchor_embeddings
from igmu.models.loader import load
from igmu.run import build_unlearner

TINY = {"steps": 3, "batch_size": 2, "anchor_batch": 2, "max_denoising_steps": 4, "warmup_steps": 1}


@pytest.fixture
def world():
    return load("world", device="cpu")


def spm(world, target="ball", **overrides):
    unlearner = build_unlearner("spm", world, target, {**TINY, **overrides}, seed=0)
    unlearner.prepare()
    return unlearner


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_membrane_sits_on_every_linear_and_conv_of_the_transformer_blocks(world):
    layers = transformer_block_layers(world.unet)
    blocks = [n for n, m in world.unet.named_modules() if type(m).__name__ == "Transformer2DModel"]
    assert blocks and all(any(name.startswith(b + ".") for b in blocks) for name in layers)
    suffixes = {name.split(".", 3)[-1] for name in layers}
    assert {"proj_in", "proj_out", "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_k",
            "transformer_blocks.0.attn2.to_out.0", "transformer_blocks.0.ff.net.0.proj",
            "transformer_blocks.0.ff.net.2"} <= suffixes
    assert not any("resnets" in name or "time_emb" in name for name in layers)
    assert any(isinstance(m, torch.nn.Conv2d) for m in layers.values())


@pytest.mark.parametrize("layer", [torch.nn.Linear(6, 5), torch.nn.Conv2d(6, 5, 3, padding=1)])
def test_zero_up_changes_nothing_and_the_update_is_alpha_over_rank_up_down(layer):
    torch.manual_seed(0)
    x = torch.randn(2, 6) if isinstance(layer, torch.nn.Linear) else torch.randn(2, 6, 4, 4)
    plain = layer(x)
    lora = LoRA(layer, 2, torch.Generator().manual_seed(0), alpha=3.0, init="kaiming-uniform")
    assert torch.equal(layer(x), plain)
    with torch.no_grad():
        lora.up.normal_()
    w = layer.weight.detach().clone()
    update = (lora.up.flatten(1) @ lora.down.flatten(1)).view_as(w) * 1.5
    functional = (F.linear(x, w + update, layer.bias) if isinstance(layer, torch.nn.Linear)
                  else F.conv2d(x, w + update, layer.bias, padding=1))
    assert not torch.allclose(layer(x), plain)
    assert torch.allclose(layer(x), functional, atol=1e-5)
    with lora_disabled({"layer": lora}):
        assert torch.equal(layer(x), plain)
    assert lora.enabled


def test_kaiming_uniform_init_is_bounded_by_one_over_sqrt_fan_in():
    lora = LoRA(torch.nn.Linear(400, 3), 4, torch.Generator().manual_seed(0), init="kaiming-uniform")
    bound = 1 / math.sqrt(400)
    assert lora.down.abs().max() <= bound and lora.down.abs().max() > 0.9 * bound
    assert torch.equal(lora.up, torch.zeros(3, 4))


def test_a_fresh_membrane_leaves_the_unet_output_unchanged(world):
    x, t = torch.randn(2, *world.latent_shape), torch.tensor([500, 100])
    cond = world.encode_prompt(["a ember ball", "a ocean box"])
    with torch.no_grad():
        before = world.unet(x, t, encoder_hidden_states=cond).sample
        unlearner = spm(world)
        after = world.unet(x, t, encoder_hidden_states=cond).sample
    assert len(unlearner.membrane) == len(transformer_block_layers(world.unet)) == 84
    assert torch.equal(before, after)


def test_epsilon_star_is_the_membrane_free_output(world):
    unlearner = spm(world)
    x, t = torch.randn(2, *world.latent_shape), torch.tensor([700, 300])
    cond = world.encode_prompt(["a ember ball", "a ember box"])
    with torch.no_grad():
        for lora in unlearner.membrane.values():
            lora.up.normal_(std=0.1)
        with_membrane = world.unet(x, t, encoder_hidden_states=cond).sample
        with lora_disabled(unlearner.membrane):
            starred = world.unet(x, t, encoder_hidden_states=cond).sample
        for lora in unlearner.membrane.values():
            lora.remove()
        membrane_free = world.unet(x, t, encoder_hidden_states=cond).sample
    assert torch.equal(starred, membrane_free)
    assert not torch.allclose(with_membrane, membrane_free, atol=1e-4)


def test_erase_target_is_negative_guidance_from_the_neutral():
    neutral, concept = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.allclose(erase_target(neutral, concept, 1.5), neutral - 1.5 * (concept - neutral))


@pytest.mark.parametrize("anchors", ["retain", "sampled"])
def test_loss_is_the_guidance_target_plus_la_strength_times_the_anchor_mse(world, anchors):
    unlearner = spm(world, la_strength=250.0, erase_guidance=1.5, anchors=anchors, anchor_batch=3)
    with torch.no_grad():
        for lora in unlearner.membrane.values():
            lora.up.normal_(std=0.05)
    batch = unlearner.draw()
    losses = unlearner.losses(batch)
    x_t, t = batch["x_t"], batch["t"]
    with torch.no_grad():
        mine = world.unet(x_t, t, encoder_hidden_states=batch["cond"]).sample
        rows = [0, 1, 0]
        mine_anchor = world.unet(x_t[rows], t[rows], encoder_hidden_states=batch["anchors"]).sample
        for lora in unlearner.membrane.values():
            lora.remove()
        e_c = world.unet(x_t, t, encoder_hidden_states=batch["cond"]).sample
        e_n = world.unet(x_t, t, encoder_hidden_states=batch["neutral"]).sample
        e_a = world.unet(x_t[rows], t[rows], encoder_hidden_states=batch["anchors"]).sample
    erase = ((mine - (e_n - 1.5 * (e_c - e_n))) ** 2).mean()
    anchoring = ((mine_anchor - e_a) ** 2).mean()
    assert anchoring > 0
    assert torch.allclose(losses["erase"], erase, rtol=1e-5)
    assert torch.allclose(losses["anchoring"], anchoring, rtol=1e-4)
    assert torch.allclose(losses["loss"], erase + 250.0 * anchoring, rtol=1e-5)


@pytest.mark.parametrize("reference", ["unconditional", "anchor"])
def test_neutral_is_the_empty_prompt_or_the_prompt_without_the_target_and_anchors_are_retain_prompts(
        world, reference):
    unlearner = spm(world, reference=reference)
    state = unlearner.rng.get_state()
    batch = unlearner.draw()
    unlearner.rng.set_state(state)
    # Replay the draw's random choices: the forget prompts and the partial sampling, then anchors.
    from igmu.algorithms.common import partial_sample, pick

    chosen = pick(unlearner.task.forget_prompts, 2, unlearner.rng)
    neutral = [""] * 2 if reference == "unconditional" else [unlearner.task.anchor_prompts[i] for i in chosen]
    assert torch.equal(batch["neutral"], world.encode_prompt(neutral))
    assert all("ball" not in prompt for prompt in neutral)
    partial_sample(world, [unlearner.task.forget_prompts[i] for i in chosen], 4, 2.0, unlearner.rng)
    retain = [unlearner.task.retain_prompts[i] for i in pick(unlearner.task.retain_prompts, 2, unlearner.rng)]
    assert torch.equal(batch["anchors"], world.encode_prompt(retain))
    assert all("ball" not in prompt for prompt in retain)


def test_sampled_anchors_keep_the_target_norm_range_and_alternate_with_the_empty_prompt(world):
    target = world.encode_prompt(["ball"])
    samples = sample_anchor_embeddings(target, 6, torch.Generator().manual_seed(0))
    norms = samples.flatten(1).norm(dim=1) / target.norm()
    assert samples.shape == (6, *target.shape[1:])
    assert torch.all(norms >= 0.8 - 1e-5) and torch.all(norms <= 1.2 + 1e-5)
    assert len(set(norms.tolist())) == 6
    unlearner = spm(world, anchors="sampled", anchor_batch=4)
    anchors = unlearner.anchor_conditions()
    empty = world.encode_prompt([""])[0]
    assert [torch.equal(a, empty) for a in anchors] == [True, False, True, False]


def test_only_the_membrane_trains_and_the_fuse_is_w_plus_alpha_over_rank_up_down(world):
    unlearner = spm(world, steps=3, alpha=3.0, rank=2, lr=1e-2)
    before = snapshot(world.unet)
    text_before = snapshot(world.text_encoder)
    membrane_before = {name: p.detach().clone() for name, p in unlearner.trained.items()}
    for _ in range(2):
        unlearner.step()
        unlearner.step_index += 1
    # Before the last step: the base weights are untouched, the membrane has moved.
    assert all(torch.equal(before[k], v) for k, v in world.unet.state_dict().items())
    assert any(not torch.equal(membrane_before[n], p) for n, p in unlearner.trained.items())
    assert all(not p.requires_grad for p in world.unet.parameters())
    # The last step trains once more, then fuses.
    membrane = unlearner.membrane
    layers = unlearner.layers
    w0 = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    state = {}

    def keep_membrane_at_fuse(original=unlearner.fuse):
        state.update({name: (lora.up.detach().clone(), lora.down.detach().clone()) for name, lora in membrane.items()})
        return original()

    unlearner.fuse = keep_membrane_at_fuse
    losses = unlearner.step()
    unlearner.step_index += 1
    assert "fused_change" in losses and losses["fused_change"] > 0
    for name, layer in layers.items():
        up, down = state[name]
        expected = w0[name] + (3.0 / 2) * (up.flatten(1) @ down.flatten(1)).view_as(w0[name])
        assert torch.equal(layer.weight, expected), name
        assert not layer._forward_hooks
    fused_keys = {f"{name}.weight" for name in layers}
    changed = {k for k, v in world.unet.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and changed <= fused_keys
    assert all(torch.equal(text_before[k], v) for k, v in world.text_encoder.state_dict().items())
    saved = unlearner.saved_apart()["membrane"]
    assert set(saved) == {f"{n}.{part}" for n in layers for part in ("down", "up")} | {"alpha"}


def test_the_fused_model_gives_what_the_model_with_its_membrane_gave(world):
    unlearner = spm(world)
    with torch.no_grad():
        for lora in unlearner.membrane.values():
            lora.up.normal_(std=0.05)
    x, t = torch.randn(2, *world.latent_shape), torch.tensor([800, 50])
    cond = world.encode_prompt(["a ember ball", "a ocean box"])
    with torch.no_grad():
        with_membrane = world.unet(x, t, encoder_hidden_states=cond).sample
        unlearner.fuse()
        fused = world.unet(x, t, encoder_hidden_states=cond).sample
    assert torch.allclose(with_membrane, fused, atol=1e-4)


def test_learning_rate_follows_warmup_then_cosine_with_hard_restarts():
    # diffusers' get_cosine_with_hard_restarts_schedule_with_warmup, evaluated by hand.
    assert cosine_with_restarts(0, 100, 10, 3) == 0.0
    assert cosine_with_restarts(5, 100, 10, 3) == 0.5
    assert cosine_with_restarts(10, 100, 10, 3) == 1.0
    assert cosine_with_restarts(25, 100, 10, 3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_with_restarts(40, 100, 10, 3) == pytest.approx(1.0)  # the first restart
    assert cosine_with_restarts(100, 100, 10, 3) == 0.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_restarts(s, 60, 7, 2))
    for step in range(60):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cosine_with_restarts(step, 60, 7, 2))
        optimizer.step()
        scheduler.step()


def test_the_step_sets_the_scheduled_learning_rate(world):
    unlearner = spm(world, steps=4, warmup_steps=2, lr=1e-3)
    rates = []
    for _ in range(3):
        unlearner.step()
        rates.append(unlearner.optimizer.param_groups[0]["lr"])
        unlearner.step_index += 1
    assert rates == pytest.approx([0.0, 5e-4, 1e-3])


def test_official_defaults_apply_on_stable_diffusion_and_world_defaults_on_the_world():
    from igmu.algorithms.base import make_params
    from igmu.models.text_to_image import StableDiffusion, WorldTextToImage

    official = make_params(SPM, {}, "object", StableDiffusion)
    assert (official.lr, official.steps, official.rank, official.alpha, official.la_strength, official.anchors,
            official.warmup_steps, official.max_denoising_steps, official.start_guidance) == (
        1e-4, 3000, 1, 1.0, 1000.0, "sampled", 500, 30, 3.0)
    assert make_params(SPM, {}, "object", WorldTextToImage) == make_params(SPM, {}, "object")
    world = make_params(SPM, {}, "sensitive", WorldTextToImage)
    assert (world.lr, world.la_strength, world.reference, world.anchors) == (1e-2, 10.0, "anchor", "retain")
    assert official.reference == "unconditional"


@pytest.mark.slow
def test_a_run_saves_the_membrane_apart(world, tmp_path):
    from safetensors.torch import load_file

    from igmu.run import save_run, unlearn

    unlearner = build_unlearner("spm", world, "ball", TINY, seed=0)
    _, changed = unlearn(unlearner)
    save_run(tmp_path, unlearner, {}, changed)
    membrane = load_file(str(tmp_path / "membrane.safetensors"))
    assert len(membrane) == 2 * 84 + 1 and float(membrane["alpha"]) == 1.0
    assert (tmp_path / "model").is_dir()


@pytest.mark.slow
def test_run_unlearning_resumed_mid_way_matches(world):
    """The optimiser state and the membrane are in the state_dict: a resume ends bit for bit."""
    def fresh():
        return spm(load("world", device="cpu"), steps=4)

    straight = fresh()
    for _ in range(2):
        straight.step()
        straight.step_index += 1
    state = straight.state_dict()
    assert state["extra"]["membrane"] and state["optimizer"]["state"]
    run_unlearning(straight, prepared=True)
    resumed = fresh()
    resumed.load_state_dict(state)
    run_unlearning(resumed, prepared=True)
    for (key, a), b in zip(straight.generator.unet.state_dict().items(),
                           resumed.generator.unet.state_dict().values()):
        assert torch.equal(a, b), key
